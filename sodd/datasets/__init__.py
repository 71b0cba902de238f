"""Datasets in PaddleX's layouts: checking, converting (VOC, LabelMe, VisDrone to COCO), splitting,
analysis, drawing, and seeded synthetic scenes (`synth`).

May import: sodd.errors, sodd.model.
"""
