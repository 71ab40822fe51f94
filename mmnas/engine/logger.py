"""Run logging: a plain-text log file and VisualDL scalars, both written by rank 0 only."""
import importlib.util
import json
import os
import time

from ..checkpoint_files import write_error

# VisualDL shows the charts of a tag "group/name" in one section per group and orders the sections
# by group name, case-insensitively (ChartPage.js of VisualDL 2.5), over every run shown at once:
# the numbers keep a training's sections first and a search's after them.
VDL_GROUPS = {"train": "1_train", "val": "2_val", "search": "3_search", "search_ops": "4_search_ops"}


def vdl_tag(group: str, name: str) -> str:
    """The VisualDL tag of scalar or image `name` in section `group` (a key of VDL_GROUPS)."""
    return f"{VDL_GROUPS[group]}/{name}"


def attention_tag(dataset: str, question_id) -> str:
    """The tag of the attention picture of one watched question: one section per dataset, so that
    runs on VQA and GQA shown together never mix their pictures."""
    return f"attention_{dataset}/q{question_id}"


class RunLogger:
    """Writes `results/log/log_run_<VERSION>.txt` and VisualDL scalars under
    `results/vdl/<VERSION>/`. VisualDL is optional: without it only the text log is kept."""

    def __init__(self, results_dir: str, version: str, enabled: bool = True, use_vdl: bool = True):
        self.enabled = enabled
        self.writer = None
        # the VisualDL writer opens with the first record (_vdl), so a run refused before it
        # logs anything leaves no empty run in VisualDL
        self.vdl_dir = None
        self.log_path = os.path.join(results_dir, "log", f"log_run_{version}.txt")
        if not enabled:
            return
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        except OSError as e:
            raise write_error(self.log_path, e, "--RESULTS_DIR") from None
        if use_vdl:
            if importlib.util.find_spec("visualdl") is None:
                print("VisualDL is not installed (pip install visualdl); logging to text only.")
            else:
                self.vdl_dir = os.path.join(results_dir, "vdl", version)

    @property
    def has_vdl(self) -> bool:
        """Whether scalars and images go anywhere (rank 0 with VisualDL installed)."""
        return self.enabled and self.vdl_dir is not None

    def _vdl(self):
        if self.writer is None and self.has_vdl:
            from visualdl import LogWriter
            try:
                self.writer = LogWriter(logdir=self.vdl_dir)
            except OSError as e:
                raise write_error(self.vdl_dir, e, "--RESULTS_DIR") from None
        return self.writer

    def text(self, message: str) -> None:
        if self.enabled:
            try:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
            except OSError as e:
                raise write_error(self.log_path, e, "--RESULTS_DIR") from None

    def config(self, cfg_dict) -> None:
        self.text("config:\n" + json.dumps(cfg_dict, indent=2, sort_keys=True, default=str))

    def scalars(self, values: dict, step: int) -> None:
        if self._vdl() is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag=tag, value=float(value), step=step)

    def hparams(self, values: dict, metric_tags: list) -> None:
        """The run's hyper-parameters for VisualDL's hparams page; `metric_tags` name scalars
        (e.g. "val/overall") whose last values the page shows beside them."""
        if self._vdl() is not None:
            self.writer.add_hparams(values, list(metric_tags))

    def image(self, tag: str, rgb, step: int) -> None:
        """An RGB picture (uint8 [H, W, 3]) for VisualDL's image tab."""
        if self._vdl() is not None:
            self.writer.add_image(tag=tag, img=rgb, step=step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
