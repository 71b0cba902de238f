"""The hardware plugin interface: the Protocol every backend implements, and device strings.

Owns `protocol` (HardwarePlugin, Predictor, DeviceInfo) and `devices` (the device-string grammar,
`cpu`, `gpu:N`, `openvino?precision=int8`, ...). The backends themselves live in the top-level
`hw_plugins` package (one sub-package per backend) or in third-party packages found through the
`sodd.hw_plugins` entry point; both implement `sodd.plugins.protocol.HardwarePlugin`.
May import: sodd.errors, sodd.model.
"""
