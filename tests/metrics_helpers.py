"""Helpers shared by the metrics tests: finding a daemon's metrics endpoint, scraping it, and the
Prometheus tools, which must be present in CI and may be absent on a developer's machine."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon


def metrics_url(daemon: Daemon) -> str:
    """The daemon logs (and flushes) its metrics address before it says it listens, so a started
    daemon's log already holds it."""
    match = re.search(r"metrics on (http://[^\s\"]+)", daemon.log())
    if match is None:
        raise AssertionError(f"the daemon did not log its metrics address:\n{daemon.log()}")
    return match.group(1)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, for the text format."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= ls)


def prometheus_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
