"""What a physicist reads: contour and dose slices, DVHs, the metrics against each scoring system's
goals and the closed loop's decisions, on one self-contained HTML page (``write_report``)."""

from rtautoplan.report.figures import (Curve, check_same_grid, contour_slices, dose_wash, drawn_structures,
                                       dvh_curves, dvh_plot, score_plot)
from rtautoplan.report.page import (decisions_html, metrics_html, metrics_table, statistics_html,
                                    write_report)

__all__ = ["Curve", "check_same_grid", "contour_slices", "decisions_html", "dose_wash", "drawn_structures",
           "dvh_curves", "dvh_plot", "metrics_html", "metrics_table", "score_plot", "statistics_html",
           "write_report"]
