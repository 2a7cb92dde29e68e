"""Run reports: `preflab report RUN_DIR [RUN_DIR ...]` -> one self-contained HTML file.

    html     write_report(run_dirs, out_path, title=...) -> Path; render_report(runs, title) -> str
    plots    the figures (PNG data URIs): curves over steps, margin histograms, Thm 4.1 scatter
    runs     load_run(path) -> RunData (metrics.jsonl, summary.json, config.yaml, eval.json, pair margins)
    margins  per-pair margin hook for the trainer (margins_histogram_data, append_pair_margins)
    panel_data  metric_panels.json: the objective's own panels, written by the trainer, read here (untrusted)
"""
