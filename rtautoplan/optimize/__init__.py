"""Fluence-map optimisation: penalties and the plan objective (objectives), L-BFGS-B (lbfgs), ADMM (admm, with its
proximal operators (prox) and its factorised workspace (admm_workspace))."""
