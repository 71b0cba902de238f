"""The network side: the gRPC server and its servicers (sodd.v1, KServe v2, health, reflection), budgets and
access control, listeners and certificates, drain, signals and systemd notification.

Turns protobuf into the runtime's typed values and back; holds no detection logic.
May import: sodd.errors, sodd.model, sodd.plugins, sodd.config, sodd.observability, sodd.runtime,
sodd.v1, sodd.oip (generated code).
"""
