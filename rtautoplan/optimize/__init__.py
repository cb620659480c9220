"""Fluence-map optimisation: penalties and the plan objective (objectives), L-BFGS-B (lbfgs), ADMM (admm)."""
