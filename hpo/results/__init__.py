"""What the studies hold, shown: status, export rows and formats, Table 1, the report, plots, the dashboard."""
