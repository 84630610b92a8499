"""Feature definitions: Feast objects and the pure functions behind them."""
