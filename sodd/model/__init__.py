"""What a model is and what its answers mean, independent of how it runs or is served.

Owns reading PaddleX model directories, image headers and decoding, preprocessing from
inference.yml, postprocessing and NMS, slicing windows, model-name bounds and program files.
May import: sodd.errors only.
"""
