"""Engine: trainers (Ultralytics DetectionTrainer subclasses), the KD criterion and the Python API."""
