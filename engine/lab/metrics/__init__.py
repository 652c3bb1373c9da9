"""Scores that both the training recipes and the benchmarks use: box AP (``boxes``), segmentation
confusion and IoU (``segmentation``), and zero-shot and similarity scores for any CLIP (``clip``)."""
