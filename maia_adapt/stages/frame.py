"""The frame every stage runs in, so that a stage's run(cfg, frame) is its science only.

The app (run.execute) opens it around the stage: the stage asks for its tracker when it knows whether it
continues an earlier run, hands over its report (results.md text, results.json values) and returns its
summary; the frame then writes results.md, results.json, summary.json, summary.md and, last, the one
finished marker DONE (resume and the tests read it; study.py reads summary.json), and closes the tracker
whatever happened. In a DDP run only rank 0 writes, as before.
"""
from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_json, atomic_write_text
from ..reporting.plots import metric_curves
from ..reporting.summary import summary_markdown
from ..runtime import distributed
from ..runtime.resume import mark_done
from ..runtime.tracking import Tracker


class StageFrame:
    def __init__(self, cfg, run_dir, title: str):
        self.cfg, self.dir, self.title = cfg, Path(run_dir), title
        self.done_dir = self.dir  # stage=activations finishes the earlier run it continues
        self._tracker: Tracker | None = None
        self._report: tuple[str | None, dict | None] = (None, None)

    def tracker(self, continues: bool = False) -> Tracker:
        """The run's tracker (metrics.jsonl, W&B), opened on the first call: `continues` appends to
        the metrics of the earlier run this one resumes."""
        if self._tracker is None:
            self._tracker = Tracker(self.cfg, self.dir, job_type=self.cfg.stage.name, continues=continues)
        return self._tracker

    def report(self, markdown: str | None, results: dict | None = None) -> None:
        """What the frame writes as results.md (text as given) and results.json when the stage ends."""
        self._report = (markdown, results)

    def finish(self, summary: dict) -> dict:
        if distributed.is_main():  # the other ranks of a DDP run only train
            markdown, results = self._report
            if results is not None:
                atomic_write_json(self.dir / "results.json", results)
            if markdown is not None:
                atomic_write_text(self.dir / "results.md", markdown)
            if self._tracker is not None:
                self._tracker.summary(summary)
            metrics = self.dir / "metrics.jsonl"
            if metrics.is_file():  # a training stage's losses and evaluations, as one picture
                metric_curves(metrics, self.dir / "curves.png", f"{self.title}: metrics by step")
            atomic_write_json(self.dir / "summary.json", summary)
            atomic_write_text(self.dir / "summary.md", summary_markdown(self.title, summary))
            mark_done(self.done_dir)
        return summary

    def __enter__(self) -> "StageFrame":
        return self

    def __exit__(self, *exc) -> None:
        if self._tracker is not None:
            self._tracker.finish()
