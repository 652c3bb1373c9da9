"""How many boxes the shipped adapter keeps as a grounding teacher at each alpha: the same 64
base-class img2img images (strength 0.2-0.5) that `dde train grounding` would generate, against
the references' true boxes. InstaGen's alpha 0.8 assumes a confident Mask R-CNN teacher.

    python bench/bench_teacher_yield.py
"""

from __future__ import annotations

import sys

from _common import REPO, save_result

sys.path.insert(0, REPO)

ALPHAS = (0.3, 0.5, 0.6, 0.8)
IMAGES = 64


def main() -> None:
    from engine.lab.train.grounding import GroundingRecipe, generate_triplets
    from engine.models.shipped import ADAPTER_DIR

    recipe = GroundingRecipe(base=["circle", "square", "triangle", "cross"], novel=["star", "ring"])
    result = {"command": "python bench/bench_teacher_yield.py", "images": IMAGES, "alphas": {}}
    for alpha in ALPHAS:
        recipe.alpha = alpha
        _, boxes, _, truth, _ = generate_triplets({"model": "embedded:shapes", "teacher": ADAPTER_DIR}, recipe,
                                                  recipe.base, 0, "cpu", 0, IMAGES, (0.2, 0.5))
        result["alphas"][str(alpha)] = {"teacher_boxes_per_image": round(sum(map(len, boxes)) / IMAGES, 3),
                                        "true_boxes_per_image": round(sum(map(len, truth)) / IMAGES, 3)}
    save_result(f"{REPO}/bench/results/teacher_yield.json", result)


if __name__ == "__main__":
    main()
