"""Graph building, the `fraudmesh` CLI, jobs (training, backtest, feature
materialisation) and replay."""
