"""Zero-shot accuracy of a CLIP folder on single-object scenes of the embedded model's world, and how
distinct its class prompts are (the mean and max cosine between the text embeddings of
"a photograph of a <class>" for different classes; 1.000 means they collapsed to one text):

    python bench/clip_zero_shot.py engine/models/clip 50
"""

import sys

import numpy as np

from engine.job.prompts import objects_phrase
from engine.lab.metrics.clip import _text_embeddings, load_clip, zero_shot_accuracy
from engine.models.embedded import model_world
from engine.world import CLASSES

if __name__ == "__main__":
    folder, per_class = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 50
    texts = _text_embeddings(load_clip(folder), [f"a photograph of {objects_phrase([c])}" for c in CLASSES])
    cosine = (texts @ texts.T).numpy()[~np.eye(len(CLASSES), dtype=bool)]
    print(f"text cosine between classes: mean {cosine.mean():.3f} max {cosine.max():.3f}")
    print("model world", zero_shot_accuracy(folder, per_class, model_world()))
