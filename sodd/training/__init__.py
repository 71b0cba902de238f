"""Making and changing models: PP-YOLOE+ SOD in Paddle dygraph, training, evaluation, export to PaddleX
model directories, and INT8 quantization.

May import: sodd.errors, sodd.model, sodd.plugins, sodd.config, sodd.observability, sodd.datasets,
sodd.runtime (to run a model it evaluates), hw_plugins. Never sodd.serving.
"""
