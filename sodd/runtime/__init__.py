"""Running models: the detection core, predictor engines, loading versions, the registry of served versions
and its model events, the manager that keeps them in step with disk, and the in-process detector.

May import: sodd.errors, sodd.model, sodd.plugins, sodd.config, sodd.observability, sodd.datasets
(synthetic scenes for timing backends), hw_plugins. Never sodd.serving: the same runtime serves
gRPC, KServe and in-process callers.
"""
