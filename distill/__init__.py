"""Teacher loading, ODE solvers, consistency parameterisation, losses, EMA and the training loop."""
