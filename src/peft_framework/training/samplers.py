"""Samplers of our own: windows of indices repeated (GRPO's num_iterations, as TRL's RepeatSampler)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class RepeatWindows:
    """The indices of `sampler`, each consecutive window of `window` indices yielded `repeats` times:
    [w0, w0, ..., w1, w1, ...]. With window = batch x accumulation x processes, every optimizer step of a
    repetition sees the same prompts."""

    def __init__(self, sampler: Iterable[int], window: int, repeats: int) -> None:
        self.sampler, self.window, self.repeats = sampler, window, repeats

    def __iter__(self) -> Iterator[int]:
        chunk: list[int] = []
        for index in self.sampler:
            chunk.append(index)
            if len(chunk) == self.window:
                for _ in range(self.repeats):
                    yield from chunk
                chunk = []
        for _ in range(self.repeats if chunk else 0):
            yield from chunk

    def __len__(self) -> int:
        return len(self.sampler) * self.repeats  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:  # DataLoader shards call it on distributed samplers
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
