"""Progress of a push or pull: bytes and layers, on one line in a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from cudabox.container import TransferEvent

_DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Mounted from")
_ABOUT_THE_IMAGE = ("Pulling from ",)


@dataclass
class LayerState:
    status: str = ""
    current: int = 0
    total: int = 0


@dataclass
class TransferProgress:
    """Fed with the engine's events; draws a bar on a terminal, prints a line per layer elsewhere."""

    what: str  # "pull REF", "push REF"
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    layers: dict[str, LayerState] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _drawn: float = 0.0

    @property
    def is_terminal(self) -> bool:
        return self.stream.isatty()

    def __call__(self, event: TransferEvent) -> None:
        # "Pulling from REPO" carries the tag or digest as its id: about the image, not a layer.
        if event.layer is None or event.status.startswith(_ABOUT_THE_IMAGE):
            return
        state = self.layers.setdefault(event.layer, LayerState())
        if state.status.startswith(_DONE):
            # One bar may follow two pushes of the same image (two tags): the second one's
            # "Layer already exists" must not hide that the first one uploaded the layer.
            return
        state.status = event.status
        if event.total:
            state.total = event.total
        if event.current is not None:
            state.current = event.current
        if event.status.startswith(_DONE):
            state.current = state.total or state.current
            if not self.is_terminal:
                self.stream.write(f"{self.what}: {event.layer}: {event.status}\n")
                self.stream.flush()
        if self.is_terminal:
            self._draw()

    @property
    def done_layers(self) -> int:
        return sum(1 for s in self.layers.values() if s.status.startswith(_DONE))

    @property
    def moved_bytes(self) -> int:
        return sum(s.current for s in self.layers.values())

    @property
    def total_bytes(self) -> int:
        return sum(s.total for s in self.layers.values())

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.layers.values() if s.status.startswith(statuses))

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        total = self.total_bytes
        share = self.moved_bytes / total if total else 0.0
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r{self.what}: [{bar:<30}] {self.moved_bytes / 1e6:,.0f}/{total / 1e6:,.0f} MB, "
            f"{self.done_layers}/{len(self.layers)} layers"
        )
        self.stream.flush()

    def abort(self) -> None:
        """End the bar's line after a failed transfer (the error message follows)."""
        if self.is_terminal and self.layers:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        if self.is_terminal:
            self._draw(force=True)
            self.stream.write("\n")
        self.stream.write(
            f"{self.what}: {len(self.layers)} layers in {seconds:.1f} s "
            f"({self.moved_bytes / 1e6:,.0f} MB moved)\n"
        )
        self.stream.flush()
