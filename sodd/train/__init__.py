"""Training PP-YOLOE+ SOD models on COCO datasets in PaddleX's layout."""
