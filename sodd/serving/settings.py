"""The configuration in force, and what a reload (SIGHUP) changes without a restart.

Which settings a reload applies is declared with each setting (sodd.config.schema). Certificates
and the tokens file are re-read on every reload, and the drain settings are read when the daemon
stops; a reload that fails (a bad file, a configuration error) raises and leaves everything as it
was. Models (added, removed or changed, and the repository) follow through the model manager.
Every other setting is fixed when the server starts (listeners, limits), so a change to one is
logged as needing a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from sodd.config.schema import ServeConfig, reloaded_settings
from sodd.serving.auth import TokenInterceptor, TokenTable
from sodd.serving.listeners import CertificateStore, TlsFiles

log = logging.getLogger(__name__)
# What a reload applies; a change to any other setting waits for a restart.
LIVE = reloaded_settings(ServeConfig)


class Settings:
    """The configuration in force, the certificate store and the tokens read from it, and the
    access check (`access`) that a reload keeps up to date."""

    def __init__(self, config: ServeConfig, reload_config: Callable[[], ServeConfig] | None) -> None:
        self.config = config
        self._reload_config = reload_config
        tls = TlsFiles.from_config(config)
        # Read before the models load, so a bad certificate or tokens file fails the start at once.
        self.certificates = CertificateStore(tls) if tls is not None else None
        self._token_table = TokenTable.read(config.tokens_file) if config.tokens_file is not None else None
        self._access: TokenInterceptor | None = None

    def access(self, default_model: Callable[[], str | None], stream_frames_checked: bool) -> TokenInterceptor:
        """The access check, built once the model registry (which knows the default model) exists;
        reloads then replace its tokens and allow_remote_management."""
        if self._access is None:
            self._access = TokenInterceptor(self._token_table, default_model, self.config.allow_remote_management,
                                            stream_frames_checked)
        return self._access

    async def reload(self) -> None:
        if self._reload_config is None:
            return
        new = await asyncio.to_thread(self._reload_config)
        old = self.config
        if (new.tokens_file is None) != (self._token_table is None) or \
                (new.tls_cert is None) != (self.certificates is None):
            raise ValueError("turning TLS or tokens on or off needs a restart")
        # Read everything before changing anything, so a failed reload leaves all as it was.
        tokens = await asyncio.to_thread(TokenTable.read, new.tokens_file) if new.tokens_file is not None else None
        if self.certificates is not None:
            files = TlsFiles.from_config(new)
            assert files is not None
            await asyncio.to_thread(self.certificates.reload, files)
            log.info("reload: certificates re-read from %s", files.cert)
        if tokens is not None:
            self._token_table = tokens
            log.info("reload: %d tokens read from %s", len(tokens.rights), new.tokens_file)
        if self._access is not None:
            self._access.tokens = self._token_table
            self._access.allow_remote_management = new.allow_remote_management
        changed = [f.name for f in dataclasses.fields(new)
                   if f.name not in LIVE and getattr(new, f.name) != getattr(old, f.name)]
        if changed:
            log.warning("reload: %s changed; restart the daemon to apply", ", ".join(changed))
        self.config = new
