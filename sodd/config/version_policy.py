"""Which versions of a model source to serve: `latest`, `latest:N` or `specific:V1,V2`."""

from __future__ import annotations

from dataclasses import dataclass

from sodd.errors import InvalidArgument


@dataclass(frozen=True)
class VersionPolicy:
    """Which complete versions to serve: the newest `latest`, or exactly `specific`."""

    latest: int = 1
    specific: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest`, `latest:N` or `specific:1,3`."""
        kind, _, arg = text.strip().partition(":")
        try:
            if kind == "latest":
                n = int(arg) if arg else 1
                if n >= 1:
                    return cls(latest=n)
            elif kind == "specific":
                versions = tuple(sorted({int(v) for v in arg.split(",") if v.strip()}))
                if versions and all(v >= 1 for v in versions):
                    return cls(latest=0, specific=versions)
        except ValueError:
            pass
        raise InvalidArgument(f"version policy {text!r} is not one of latest, latest:N, specific:V1,V2")

    def select(self, candidates: list[int]) -> list[int]:
        if self.specific:
            return [v for v in self.specific if v in candidates]
        return sorted(candidates, reverse=True)[: self.latest]

    def __str__(self) -> str:
        return f"specific:{','.join(map(str, self.specific))}" if self.specific else f"latest:{self.latest}"
