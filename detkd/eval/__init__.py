"""Evaluation: COCO mAP with pycocotools for any runtime, and reports."""
