"""Datasets: the synthetic scene generator, data YAML validation and COCO ground truth."""
