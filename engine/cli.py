"""``dde``: run, resume, status, report, finalize, world export, schema.

Heavy libraries (ray, torch, pyarrow) are imported inside the commands that need them,
so ``dde schema`` and ``dde status`` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError

__all__ = ["main"]


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field by dotted path, e.g. budget.max_images=500")
    p.add_argument("--max-images", type=int, help="override budget.max_images")
    p.add_argument("--seed", type=int, help="override the job seed")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001; default: start a "
                                     "local Ray (or use RAY_ADDRESS)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="only the result and errors: no progress bar; Ray's "
                        "and the workers' output stay in Ray's logs (/tmp/ray/session_latest/logs)")
    output.add_argument("--log", action="store_true", help="no progress bar: waiting and the workers' output as "
                        "log lines (what a submitted job's driver does)")


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", dest="storage_options", action="append", default=[], metavar="KEY=VALUE",
                   help="a storage option for the output, as in a spec's storage_options (dotted keys nest: "
                        "client_kwargs.endpoint_url=http://HOST:9000); repeatable. Default: the job's recorded "
                        "options (never credentials) and the AWS_* variables")


def _given_options(args) -> dict:
    from .spec import apply_overrides

    return apply_overrides({}, getattr(args, "storage_options", []), flag="--storage-option")


def _clip_folder(text: str) -> str:
    """An argparse type for an exported CLIP folder: a bad one exits 2 naming its flag."""
    if not all(os.path.isfile(os.path.join(text, name)) for name in ("config.json", "model.safetensors")):
        raise argparse.ArgumentTypeError(f"expected a CLIP folder holding config.json and model.safetensors "
                                         f"(e.g. engine/models/clip), got {text!r}")
    return text


def _controlnet_folder(text: str) -> str:
    """An argparse type for a trained ControlNet folder (diffusers ControlNetModel, safetensors)."""
    if not all(os.path.isfile(os.path.join(text, name)) for name in ("config.json",
                                                                      "diffusion_pytorch_model.safetensors")):
        raise argparse.ArgumentTypeError(f"expected a ControlNet folder holding config.json and "
                                         f"diffusion_pytorch_model.safetensors (e.g. engine/models/controlnet), "
                                         f"got {text!r}")
    return text


def _model_folder(text: str) -> str:
    """An argparse type for an exported embedded model folder (a diffusers pipeline with vae/ and unet/)."""
    if not all(os.path.isfile(os.path.join(text, name)) for name in ("model_index.json", "vae/config.json",
                                                                      "unet/config.json")):
        raise argparse.ArgumentTypeError(f"expected an exported model folder holding model_index.json, vae/ and unet/ "
                                         f"(e.g. engine/models/shapes), got {text!r}")
    return os.path.abspath(text)


def _at_least(minimum, kind=int):
    """An argparse type for a number no smaller than ``minimum``: a bad value exits 2 naming its flag."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} >= {minimum}, got {text!r}")
        return value

    return parse


def _names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated class names, got {value!r}")
    return names


def _unit(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got {value!r}")
    return number


def _add_capacity_options(p: argparse.ArgumentParser) -> None:
    """The detector's size; each default is sized for the training data (``heads.boxes.detector.capacity``)."""
    p.add_argument("--queries", type=_at_least(1), help="detector queries, a square (64, 100, 400, 900): the most "
                                                         "boxes an image can get. Default: max(64, 4 x the most "
                                                         "boxes in one training image), rounded up to a square")
    p.add_argument("--layers", type=_at_least(1), help="transformer layers over the queries (default 2)")
    p.add_argument("--width", type=_at_least(32), help="feature width, a multiple of 32 (default 128; 256 over "
                                                        "100 classes)")


def _shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N, as a tuple."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return k, n


def _add_trainer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_at_least(1), default=1, help="Ray Train workers (DDP when more than one)")
    p.add_argument("--gpus", action="store_true", help="one GPU per worker")


def _parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    parser = argparse.ArgumentParser(prog="dde", description="dde, the diffusion data engine")
    try:
        parser.add_argument("--version", action="version", version=f"dde {version('dde')}")
    except PackageNotFoundError:  # a checkout that was never installed
        parser.add_argument("--version", action="version", version="dde (not installed)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job spec (continues it if the output already holds it)")
    run.add_argument("spec", help="job spec, YAML or JSON")
    run.add_argument("--output", help="override the spec's output URI")
    _add_overrides(run)
    run.add_argument("--no-finalize", action="store_true", help="leave the output unfinalized")
    _add_run_options(run)

    submit = sub.add_parser("submit", help="submit a job spec to a Ray cluster (Ray Jobs); idempotent")
    submit.add_argument("spec")
    submit.add_argument("--address", required=True, help="Ray dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--output", help="override the spec's output: an s3:// URI or a path every node shares "
                        "(a relative path only for a cluster on this machine)")
    _add_overrides(submit)
    submit.add_argument("--image", action="store_true",
                        help="the cluster's image already has dde: do not upload this checkout")
    submit.add_argument("--driver-gpus", type=float, help="GPUs reserved for the driver (default none)")
    for name, helptext in (("logs", "a submitted job's driver log"), ("stop", "stop a submitted job")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("id", help="submission id printed by dde submit")
        p.add_argument("--address", required=True)
    jobs = sub.add_parser("jobs", help="the dde jobs submitted to a Ray cluster, newest first")
    jobs.add_argument("--address", required=True, help="Ray dashboard, e.g. http://HEAD:8265")

    resume = sub.add_parser("resume", help="continue a job from the markers under its output URI")
    resume.add_argument("uri")
    _add_run_options(resume)

    status = sub.add_parser("status", help="progress of a job, read from its output")
    status.add_argument("uri")
    status.add_argument("--json", action="store_true")

    report = sub.add_parser("report", help="write the job's HTML report (report.html) into its output")
    report.add_argument("uri")
    report.add_argument("--out", help="write the page to this local file instead")

    fin = sub.add_parser("finalize", help="merge committed units into the final dataset")
    fin.add_argument("uri")
    exp = sub.add_parser("export", help="write a finished output in another layout (from its Parquet shards, "
                                        "without regenerating)")
    exp.add_argument("uri", metavar="OUT", help="a finished dde output")
    exp.add_argument("--to", required=True, choices=["parquet", "coco", "webdataset"])
    exp.add_argument("--out", required=True, metavar="DIR", help="a new folder or prefix (absent or empty); "
                     "the --storage-option values apply to it too when it is on the same storage as OUT")
    exp.add_argument("--coco-shard-images", type=_at_least(1), default=200_000,
                     help="above this many images, numbered COCO shard files (default 200000)")
    exp.add_argument("--webdataset-shard-bytes", type=_at_least(1), default=1_000_000_000,
                     help="about this many bytes a tar (default 1e9)")
    for p in (resume, status, report, fin, exp):
        _add_storage_options(p)

    world = sub.add_parser("world", help="the procedural shapes world")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    export = world_sub.add_parser("export", help="write a COCO-format shapes dataset")
    export.add_argument("--out", required=True)
    export.add_argument("--images", type=int, required=True)
    export.add_argument("--split", default="train", choices=["train", "val"])
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--size", type=int, default=64)
    export.add_argument("--max-objects", type=int, default=4)
    export.add_argument("--min-scale", type=float, default=0.18, help="smallest object diameter, share of the size")
    export.add_argument("--max-scale", type=float, default=0.42, help="largest object diameter, share of the size")

    train = sub.add_parser("train", help="train the project's own models")
    train_sub = train.add_subparsers(dest="train_command", required=True)
    diffusion = train_sub.add_parser("diffusion", help="the embedded diffusion model, on the shapes world")
    diffusion.add_argument("--out", required=True, help="training folder (checkpoints resume from here)")
    diffusion.add_argument("--vae-steps", type=_at_least(1))
    diffusion.add_argument("--unet-steps", type=_at_least(1))
    diffusion.add_argument("--batch-size", type=_at_least(1))
    diffusion.add_argument("--unet-lr", type=_at_least(1e-8, float))
    diffusion.add_argument("--text-encoder", choices=("train", "frozen-clip"),
                           help="train: a text encoder trained with the UNet (v1); frozen-clip: the small shapes "
                                "CLIP's text tower, frozen (v2)")
    diffusion.add_argument("--init-from", type=_model_folder,
                           help="warm-start from an exported model: its VAE (no VAE phase), UNet and, with "
                                "--text-encoder train, text encoder")
    diffusion.add_argument("--max-minutes", type=_at_least(0.0, float), help="stop cleanly after this many minutes of training (encoding the latent pool once is not counted); rerun to continue")
    diffusion.add_argument("--until-step", type=_at_least(1), help="stop cleanly at this UNet step; rerun to continue")
    diffusion.add_argument("--export-unfinished", action="store_true",
                           help="export the EMA weights reached so far even if training is not done")
    diffusion.add_argument("--export", action="store_true",
                           help="when done, install the model as embedded:shapes (engine/models/shapes)")

    clip = train_sub.add_parser("clip", help="the small shapes CLIP (contrastive, on rendered scenes and prompts)")
    clip.add_argument("--out", required=True, help="training folder (checkpoints resume from here)")
    clip.add_argument("--steps", type=_at_least(1))
    clip.add_argument("--batch-size", type=_at_least(1))
    clip.add_argument("--lr", type=_at_least(0.0, float), help="peak learning rate (recipe default 1e-3)")
    clip.add_argument("--freeze-text", action=argparse.BooleanOptionalAction,
                      help="train the image tower alone: the text tower, which is the embedded UNet's text encoder, "
                           "stays bit-identical (for continuing from a shipped CLIP with --init-from); a rerun keeps "
                           "the folder's choice unless --freeze-text or --no-freeze-text is given")
    clip.add_argument("--max-minutes", type=_at_least(0.0, float), help="stop cleanly after this long; rerun to continue")
    clip.add_argument("--export-unfinished", action="store_true", help="export the weights reached so far")
    clip.add_argument("--export", action="store_true", help="when exported, install the model at engine/models/clip")
    clip.add_argument("--init-from", type=_clip_folder, help="warm-start a new run (no checkpoint in --out yet) from "
                      "an exported CLIP folder, e.g. engine/models/clip: continuing without the checkpoint")

    controlnet = train_sub.add_parser("controlnet", help="a segmentation ControlNet for the embedded model "
                                                         "(from_unet of its UNet), on rendered class-index maps")
    controlnet.add_argument("--out", required=True, help="training folder (checkpoints resume from here)")
    controlnet.add_argument("--steps", type=_at_least(1))
    controlnet.add_argument("--batch-size", type=_at_least(1))
    controlnet.add_argument("--max-minutes", type=_at_least(0.0, float), help="stop cleanly after this long; rerun "
                                                                             "to continue")
    controlnet.add_argument("--init-from", type=_controlnet_folder,
                            help="warm-start a new run from a trained ControlNet folder (e.g. engine/models/controlnet "
                                 "after the embedded model changes) instead of from_unet")
    controlnet.add_argument("--worlds", type=lambda text: tuple(text.split(",")), metavar="W[,W]",
                            help="the rendered worlds a batch comes from, in turn: model (the embedded model's, the "
                                 "default) and/or default (dde world export's: more, smaller objects)")
    controlnet.add_argument("--eval-images", type=_at_least(2), default=64,
                            help="val scenes for the agreement measured against an untrained ControlNet")
    controlnet.add_argument("--export", action="store_true",
                            help="install at engine/models/controlnet, only if it beats the untrained one and, "
                                 "warm-started, the one it started from")

    oracle = train_sub.add_parser("oracle", help="the fidelity oracle (multi-label classifier) on rendered scenes")
    oracle.add_argument("--steps", type=_at_least(1), default=1500)
    segmenter = train_sub.add_parser("segmenter", help="the segmentation oracle (semantic masks) on rendered scenes")
    segmenter.add_argument("--steps", type=_at_least(1), default=3000)

    adapter = train_sub.add_parser("adapter", help="the Detection-Adapter box head on a COCO folder (Ray Train)")
    adapter.add_argument("--data", required=True, action="append",
                         help="COCO folder: annotations/instances_train.json, images/train/ (and a val split, else "
                              "part of train is held out); repeat it to pool several (e.g. two rendered worlds)")
    adapter.add_argument("--model", default="embedded:shapes", help="the diffusion model whose features it reads")
    adapter.add_argument("--out", required=True, help="training folder; rerun the command to resume")
    adapter.add_argument("--steps", type=_at_least(1), default=3000)
    adapter.add_argument("--batch-size", type=_at_least(1), default=32)
    adapter.add_argument("--lr", type=_at_least(0.0, float), default=1e-3)
    adapter.add_argument("--no-heatmap", action="store_true", help="train without the PROPS heatmap head")
    adapter.add_argument("--heatmap-weight", type=_at_least(0.0, float), default=10.0,
                         help="the heatmap MSE's weight (shipped: 10; PROPS' code: 1.5)")
    adapter.add_argument("--heatmap-sigma", choices=["centernet", "radius"], default="centernet",
                         help="heatmap Gaussian: sigma (2r+1)/6 as CenterNet (shipped), or r as PROPS' Eq. 1")
    adapter.add_argument("--heatmap-level", choices=["finest", "coarsest"], default="finest",
                         help="the map the heatmap head reads: the fused finest (shipped) or the coarsest "
                              "level (PROPS' code)")
    adapter.add_argument("--class-weight", type=_at_least(0.0, float), default=2.0,
                         help="focal class loss weight (shipped: 2; DINO's configs: 1)")
    adapter.add_argument("--eval-every", type=_at_least(1), default=250, help="COCOeval on val every K steps")
    _add_capacity_options(adapter)
    _add_trainer_options(adapter)

    grounding = train_sub.add_parser("grounding", help="the open-vocabulary grounding head: base classes from an "
                                                       "adapter teacher, then mean-teacher self-training on novel ones")
    grounding.add_argument("--base", required=True, type=_names, help="comma-separated base classes")
    grounding.add_argument("--novel", required=True, type=_names, help="comma-separated novel classes")
    grounding.add_argument("--model", default="embedded:shapes")
    grounding.add_argument("--teacher", default="world",
                           help="'world' (the references' exact boxes) or a trained adapter folder, whose boxes "
                                "scoring --alpha or more are kept")
    grounding.add_argument("--out", required=True, help="training folder; rerun the command to resume")
    grounding.add_argument("--images", type=_at_least(1), default=1200, help="generated images per stage")
    grounding.add_argument("--base-steps", type=_at_least(1), default=2000)
    grounding.add_argument("--novel-steps", type=_at_least(1), default=1000)
    grounding.add_argument("--batch-size", type=_at_least(1), default=32)
    grounding.add_argument("--alpha", type=_unit, default=0.8, help="teacher boxes kept at this score or more")
    grounding.add_argument("--beta", type=_unit, default=0.4, help="pseudo-labels kept at this score or more")
    grounding.add_argument("--eval-every", type=_at_least(1), default=250)
    grounding.add_argument("--class-weight", type=_at_least(0.0, float), default=2.0,
                           help="focal class loss weight (shipped: 2; InstaGen's and DINO's configs: 1)")
    grounding.add_argument("--class-template", default="{}",
                           help="context of the class-name embeddings, '{}' the name (shipped: '{}'; InstaGen: "
                                "'a photograph of a {}'); saved in the card, used again at inference")
    grounding.add_argument("--novel-lr-scale", type=_at_least(0.0, float), default=0.1,
                           help="stage 2's learning rate as a share of stage 1's (shipped: 0.1; InstaGen: 1)")
    grounding.add_argument("--score-classes", choices=["all", "named"], default="all",
                           help="classes each image's class loss scores: every class of its stage (shipped) or "
                                "the 1-2 its prompt names (InstaGen)")
    grounding.add_argument("--region-clip", default="embedded:clip",
                           help="the self-training teacher's region classifier (ViLD): a CLIP scores each box's crop "
                                "against every class name and its novel-class scores, ensembled with the teacher's, "
                                "give the pseudo-boxes ('embedded:clip', a CLIPModel folder or hub id), or 'none' "
                                "(InstaGen: the teacher's own scores); saved in the card, used again at inference")
    _add_capacity_options(grounding)
    _add_trainer_options(grounding)

    bench = sub.add_parser("bench", help="quality benchmarks against the shapes world")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    fidelity = bench_sub.add_parser("fidelity", help="prompt fidelity and Fréchet distance of a diffusion model")
    fidelity.add_argument("--model", default="embedded:shapes")
    fidelity.add_argument("--per-class", type=_at_least(2), default=50, help="images per class, for each prompt kind")
    fidelity.add_argument("--steps", type=_at_least(1), default=25)
    fidelity.add_argument("--guidance-scale", type=_at_least(0.0, float), default=7.5)
    fidelity.add_argument("--out", default="bench/results")
    fidelity.add_argument("--seed", type=_at_least(0), default=0,
                          help="draws the two-class prompts and the generation seeds (a second seed checks that a "
                               "difference between models is not the draw)")
    downstream = bench_sub.add_parser("downstream", help="the papers' downstream tables on the shapes world: "
                                                         "probes trained on each dde source against real data")
    downstream.add_argument("--quick", action="store_true", help="small sets and few steps: checks the pipeline "
                                                                  "end to end (numbers are not meaningful)")
    downstream.add_argument("--out", help="work folder: sources, probes and the tables (default "
                                          "bench/out/downstream[-quick]); rerun to resume")
    downstream.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N",
                            help="train every N-th probe from the K-th: run K = 0..N-1 side by side on N cores "
                                 "(each probe uses one torch thread); shard 0 runs the sources, the others wait")
    labels = bench_sub.add_parser("labels", help="label quality of the attention heads and the shipped box heads "
                                                 "against ground truth (segmentation oracle; low-strength img2img "
                                                 "references)")
    labels.add_argument("--model", default="embedded:shapes")
    labels.add_argument("--images", type=_at_least(2), default=96, help="images per ground-truth source")
    labels.add_argument("--steps", type=_at_least(1), default=25)
    labels.add_argument("--guidance-scale", type=_at_least(0.0, float), default=7.5)
    labels.add_argument("--head-params", type=json.loads, default=None,
                        help='attention head params as JSON, e.g. \'{"cross_resolutions": [8]}\'')
    labels.add_argument("--out", default="bench/results")
    labels.add_argument("--seed", type=_at_least(0), default=0,
                        help="draws the prompts, the img2img references and the generation seeds (a second seed "
                             "checks that a difference between settings is not the draw)")
    labels.add_argument("--reference-world", choices=["model", "default"], default="model",
                        help="img2img references: the model's training world (model) or `dde world export`'s "
                             "default scenes (default: more and smaller objects, what the demo uses)")
    labels.add_argument("--source", choices=["attention", "controlnet"], default="attention",
                        help="attention: the attention and box heads; controlnet: condition-image agreement of a "
                             "ControlNet with and without High-quality Image Selection, and its cost")
    labels.add_argument("--controlnet", default="embedded:shapes", help="with --source controlnet")
    labels.add_argument("--min-miou", type=_unit, default=0.5, help="with --source controlnet: the selection's bound")

    probe = sub.add_parser("probe", help="train a standard detector (torchvision FCOS) or semantic segmenter "
                                         "(LR-ASPP), no pretrained weights, on a finished dde output and report COCO "
                                         "box AP or mIoU on your val set (Ray Train)")
    probe.add_argument("uri", metavar="OUT", help="a finished dde output (job.json, coco/instances.json)")
    probe.add_argument("--val", required=True, help="COCO folder: annotations/instances_val.json, images/val/ "
                                                    "(as `dde world export --split val` writes)")
    probe.add_argument("--real", help="COCO folder of real training data: annotations/instances_train.json, "
                                      "images/train/ (or another finished dde output); mixed in by --alpha")
    probe.add_argument("--alpha", type=_unit, help="with --real: each sample is synthetic with this probability "
                                                   "(Diffusion Synthesis Eq. 3; default 0.4, the paper's best)")
    probe.add_argument("--task", choices=["detection", "segmentation"], default="detection",
                       help="detection: FCOS, COCOeval box AP/AP50; segmentation: LR-ASPP on the output's "
                            "semantic masks (uncertain pixels ignored), mIoU against val's masks")
    probe.add_argument("--segmenter", choices=["mobilenet_v3_small", "mobilenet_v3_large"],
                       default="mobilenet_v3_small", help="the LR-ASPP trunk of --task segmentation")
    probe.add_argument("--synthetic-images", type=_at_least(1), metavar="N",
                       help="train on the output's first N images only (compare sources at equal counts)")
    probe.add_argument("--steps", type=_at_least(1), default=800)
    probe.add_argument("--batch-size", type=_at_least(1), default=32)
    probe.add_argument("--lr", type=_at_least(0.0, float),
                       help="AdamW peak learning rate (default 1e-2)")
    probe.add_argument("--eval-every", type=_at_least(1), help="score on val every K steps (default steps/8)")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--out", help="where probe.json, curve.png and checkpoints go (default OUT/probe); "
                                     "rerun the command to resume")
    probe.add_argument("--threads", type=_at_least(1), default=1,
                       help="torch threads per worker (default 1: on cores another job uses, more threads "
                            "wait on each other; raise it on idle cores)")
    _add_trainer_options(probe)

    sub.add_parser("schema", help="print the job spec's JSON Schema")

    api = sub.add_parser("serve", help="the HTTP API on Ray Serve, on the cluster ray.init() finds (RAY_ADDRESS); "
                                       "token and output roots from the environment, see deploy/README.md")
    api.add_argument("--address", help="Ray dashboard the jobs go to (default $DDE_API_RAY_ADDRESS or "
                                       "http://127.0.0.1:8265)")
    api.add_argument("--host", default="127.0.0.1", help="where Serve's HTTP proxy listens")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--openapi", action="store_true",
                     help="print the OpenAPI document and exit (dde serve --openapi > deploy/openapi.json)")
    return parser


def _cmd_run(args) -> int:
    from .job.runner import run_job
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides, max_images=args.max_images, seed=args.seed, output=args.output)
    args.uri = spec.output  # for the line that Ctrl-C prints
    return _report(run_job(spec, address=args.address, quiet=args.quiet, log=args.log,
                           finalize=not args.no_finalize))


def _open_job(args):
    """The output at ``args.uri`` and its recorded spec, whose storage options are the recorded
    ones under what the user gave (the first read, with only what was given, fails fast), and
    whose output is where the URI says (the output may have moved since)."""
    from .output.ledger import require_job_spec
    from .output.storage import Store, job_options
    from .spec import JobSpec

    given = _given_options(args)
    recorded = require_job_spec(Store(args.uri, given, quick=True), args.uri)
    options = job_options(recorded[0].storage_options, given)
    spec = JobSpec.model_validate({**recorded[0].model_dump(), "output": args.uri, "storage_options": options})
    return Store(spec.output, options), spec


def _cmd_submit(args) -> int:
    from .service.submit import submit
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides, max_images=args.max_images, seed=args.seed, output=args.output)
    from .output.location import resolve_submitted_output
    from .output.storage import public_options

    # a relative output would land in Ray's temporary copy of the working dir: resolve or refuse it first
    spec = spec.model_copy(update={"output": resolve_submitted_output(spec.output, args.address)})
    sid, outcome = submit(spec, args.address, use_working_dir=not args.image, driver_gpus=args.driver_gpus)
    print(f"{outcome}: {sid}")
    if public_options(spec.storage_options) != spec.storage_options:
        print("note: the credentials in storage_options were not sent (the dashboard shows a job's runtime env); "
              "the cluster's nodes use their own: AWS_* variables or an instance role")
    print(f"output: {spec.output}   watch: dde status {spec.output}   logs: dde logs {sid} --address {args.address}")
    return 0


def _cmd_logs(args) -> int:
    from .service.submit import job_logs

    print(job_logs(args.id, args.address), end="")
    return 0


def _cmd_jobs(args) -> int:
    import time

    from .service.submit import list_jobs

    for job in list_jobs(args.address):
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(job.start_time / 1000)) if job.start_time else "-"
        print(f"{job.submission_id}  {job.status.value:<9} {started}  {job.metadata['dde_output']}")
    return 0


def _cmd_stop(args) -> int:
    from .service.submit import stop_job

    print("stopped" if stop_job(args.id, args.address) else "not running")
    return 0


def _cmd_resume(args) -> int:
    from .job.runner import run_job

    _, spec = _open_job(args)
    return _report(run_job(spec, address=args.address, quiet=args.quiet, log=args.log))


def _report(result) -> int:
    print(f"{result.stop_reason}: {result.images} images, {result.instances} instances in {result.waves} wave(s)"
          + (f"; stuck: {', '.join(result.stuck)}" if result.stuck else ""))
    if not result.images:  # a job that made nothing has failed, whatever stopped it
        reason = f"; the first reject: {result.rejects[0]['reason']}" if result.rejects else ""
        print(f"error: the job made no image{reason}. See `dde status {result.output}`", file=sys.stderr)
        return 1
    folders = ", ".join(f"{result.output}/{f}/" for f in result.formats)
    print(f"dataset: {folders} (manifest.json lists every file), card {result.output}/README.md")
    return 0


def _cmd_status(args) -> int:
    from .job.status import format_status, job_status

    status = job_status(_open_job(args)[0])
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0


def _cmd_report(args) -> int:
    from .job.report import write_report

    print(f"report: {write_report(_open_job(args)[0], out=args.out)}")
    return 0


def _cmd_finalize(args) -> int:
    from .job.finalize import finalize_job
    from .output.lease import refuse_if_held

    store, spec = _open_job(args)
    refuse_if_held(store, "dde finalize")
    job = finalize_job(store, spec)
    print(f"finalized {args.uri}: {job['images']} images, {job['instances']} instances "
          f"({job['attempts_removed']} abandoned attempt folder(s) removed)")
    return 0


def _cmd_export(args) -> int:
    from .job.export import export_output
    from .output.storage import Store

    given = _given_options(args)
    same = args.out.split("://")[0] == args.uri.split("://")[0] if "://" in args.out + args.uri else True
    layouts = export_output(Store(args.uri, given), args.to, Store(args.out, given if same else {}),
                            coco_shard_images=args.coco_shard_images,
                            webdataset_shard_bytes=args.webdataset_shard_bytes)
    files = layouts[args.to]
    print(f"exported {args.uri} as {args.to} to {args.out}: {len(files)} file(s) (and manifest.json)")
    return 0


def _cmd_world(args) -> int:
    from .world import WorldConfig, export_coco

    try:
        config = WorldConfig(size=args.size, max_objects=args.max_objects, min_scale=args.min_scale,
                             max_scale=args.max_scale)
    except ValueError as e:
        raise UserError(str(e)) from e
    if args.images < 1:
        raise UserError(f"--images: expected a positive number of images, got {args.images}")
    path = export_coco(args.out, args.images, split=args.split, seed=args.seed, config=config)
    print(f"wrote {args.images} {args.split} images: {path}")
    return 0


def _cmd_train(args) -> int:
    if args.train_command == "oracle":
        from .lab.train.oracle import train_oracle

        print(json.dumps(train_oracle(steps=args.steps), indent=1))
        return 0
    if args.train_command == "segmenter":
        from .lab.train.segmenter import train_segmenter

        print(json.dumps(train_segmenter(steps=args.steps), indent=1))
        return 0
    if args.train_command == "adapter":
        from .lab.train.adapter import AdapterRecipe, train_adapter

        recipe = AdapterRecipe(steps=args.steps, batch=args.batch_size, lr=args.lr, heatmap=not args.no_heatmap,
                               heatmap_weight=args.heatmap_weight, eval_every=args.eval_every,
                               queries=args.queries, layers=args.layers, width=args.width,
                               class_weight=args.class_weight, heatmap_sigma=args.heatmap_sigma,
                               heatmap_level=args.heatmap_level)
        print(json.dumps(train_adapter(args.data, args.model, args.out, recipe, args.workers, args.gpus), indent=1))
        return 0
    if args.train_command == "grounding":
        from .lab.train.grounding import GroundingRecipe, train_grounding

        recipe = GroundingRecipe(base=args.base, novel=args.novel, images=args.images, base_steps=args.base_steps,
                                 novel_steps=args.novel_steps, batch=args.batch_size, alpha=args.alpha,
                                 beta=args.beta, eval_every=args.eval_every, queries=args.queries,
                                 layers=args.layers, width=args.width, class_weight=args.class_weight,
                                 class_template=args.class_template, novel_lr_scale=args.novel_lr_scale,
                                 score_classes=args.score_classes, region_clip=args.region_clip)
        print(json.dumps(train_grounding(args.model, args.out, recipe, args.teacher, args.workers, args.gpus),
                         indent=1))
        return 0
    if args.train_command == "clip":
        return _train_clip(args)
    if args.train_command == "controlnet":
        return _train_controlnet(args)
    return _train_diffusion(args)


def _cmd_bench(args) -> int:
    if args.bench_command == "labels" and args.source == "controlnet":
        from .lab.evals.controlnet import controlnet_labels_benchmark

        controlnet_labels_benchmark(args.model, args.controlnet, args.images, args.steps, args.guidance_scale,
                                    min_miou=args.min_miou, out_dir=args.out)
        print(open(os.path.join(args.out, "labels-controlnet.md")).read())
        return 0
    if args.bench_command == "downstream":
        from .lab.evals.downstream import FULL, QUICK, downstream_benchmark

        out = args.out or os.path.join("bench", "out", "downstream-quick" if args.quick else "downstream")
        downstream_benchmark(os.path.abspath(out), QUICK if args.quick else FULL, args.shard)
        print(open(os.path.join(out, "downstream.md")).read())
        return 0
    if args.bench_command == "labels":
        from .lab.evals.labels import labels_benchmark, result_name

        result = labels_benchmark(args.model, args.images, args.steps, args.guidance_scale,
                                  seed=args.seed, head_params=args.head_params, out_dir=args.out,
                                  world=args.reference_world)
        print(open(os.path.join(args.out, f"{result_name(args.reference_world, args.seed)}.md")).read())
        return 0 if result else 1
    from .lab.evals.fidelity import fidelity_benchmark

    print(json.dumps(fidelity_benchmark(args.model, args.per_class, args.steps, args.guidance_scale,
                                        seed=args.seed, out_dir=args.out), indent=1))
    return 0


def _stored_recipe(out: str, recipe_type):
    """The recipe a training folder was started with (``out/recipe.json``), else the defaults: a
    rerun continues with the folder's recipe and its flags only override it. A broken file is a
    UserError naming ``--out``."""
    stored = os.path.join(out, "recipe.json")
    try:
        return recipe_type(**json.load(open(stored))) if os.path.isfile(stored) else recipe_type()
    except (ValueError, TypeError) as e:
        raise UserError(f"--out: expected a training folder whose recipe.json holds {recipe_type.__name__} fields, "
                        f"got {stored!r} ({e}); fix or remove that file, or pick another --out") from e


def _train_diffusion(args) -> int:
    import shutil
    from dataclasses import asdict, replace

    from .lab.train.diffusion import DiffusionRecipe, train_diffusion
    from .models.embedded import EMBEDDED_MODELS

    overrides = {k: v for k, v in {"vae_steps": args.vae_steps, "unet_steps": args.unet_steps,
                                   "batch_size": args.batch_size, "unet_lr": args.unet_lr,
                                   "text_encoder": args.text_encoder, "init_from": args.init_from}.items()
                 if v is not None}
    recipe = _stored_recipe(args.out, DiffusionRecipe)
    status = train_diffusion(args.out, replace(recipe, **overrides), max_minutes=args.max_minutes,
                             until_step=args.until_step, export_unfinished=args.export_unfinished)
    print(json.dumps(status))
    if args.export and status["exported"]:
        target = EMBEDDED_MODELS["shapes"]
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(f"{args.out}/model", target)
        print(f"installed as embedded:shapes at {target}")
    return 0


def _cmd_probe(args) -> int:
    from .lab.train.probe import ProbeRecipe, probe

    alpha = args.alpha if args.alpha is not None else (0.4 if args.real else 1.0)
    recipe = ProbeRecipe(steps=args.steps, batch=args.batch_size, lr=args.lr, alpha=alpha,
                         eval_every=args.eval_every, seed=args.seed, task=args.task,
                         synthetic_images=args.synthetic_images, threads=args.threads, segmenter=args.segmenter)
    print(json.dumps(probe(args.uri, args.val, recipe, args.real, args.out, args.workers, args.gpus), indent=1))
    return 0


def _train_controlnet(args) -> int:
    import shutil
    from dataclasses import asdict, replace

    from .models.embedded import EMBEDDED_CONTROLNETS
    from .lab.evals.controlnet import measure, strongest_baseline
    from .lab.train.controlnet import ControlNetRecipe, recipe_flags, train_controlnet, write_card

    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size,
                                   "init_from": args.init_from, "worlds": args.worlds}.items() if v is not None}
    try:
        recipe = replace(_stored_recipe(args.out, ControlNetRecipe), **overrides)
    except ValueError as e:
        raise UserError(f"--{e}") from e
    status = train_controlnet(args.out, recipe, max_minutes=args.max_minutes)
    agreement = measure(args.out, args.eval_images)
    rival = strongest_baseline(agreement)
    better = agreement["trained"]["mIoU"] > agreement[rival]["mIoU"]
    write_card(args.out, {"agreement": agreement, "command": f"dde train controlnet --out {args.out} "
                          f"{recipe_flags(asdict(recipe))} --eval-images {args.eval_images}", "note": "segmentation-oracle mIoU between the "
                          "condition and the generated image (txt2img, 25 steps, guidance 7.5, class_index "
                          "palette), on the same val scenes and seeds"})
    print(json.dumps({**status, "agreement": agreement, "beats_untrained_and_start": better}, indent=1))
    if args.export and better:
        target = EMBEDDED_CONTROLNETS["shapes"]
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(f"{args.out}/controlnet", target)
        print(f"installed as the embedded ControlNet at {target}")
    elif args.export:
        print(f"not installed: it does not beat {rival} (mIoU {agreement[rival]['mIoU']})")
    return 0


def _train_clip(args) -> int:
    import shutil
    from dataclasses import asdict, replace

    from .lab.train.clip import ClipRecipe, train_clip
    from .models.embedded import CLIP_DIR

    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "freeze_text": args.freeze_text}.items() if v is not None}
    status = train_clip(args.out, replace(_stored_recipe(args.out, ClipRecipe), **overrides), max_minutes=args.max_minutes,
                        export_unfinished=args.export_unfinished, init_from=args.init_from)
    print(json.dumps(status))
    if args.export and status["exported"]:
        shutil.rmtree(CLIP_DIR, ignore_errors=True)
        shutil.copytree(f"{args.out}/model", CLIP_DIR)
        print(f"installed at {CLIP_DIR}")
    return 0


def _cmd_schema(args) -> int:
    from .spec import json_schema

    print(json.dumps(json_schema(), indent=1))
    return 0


def _cmd_serve(args) -> int:
    from .service.api import load_settings, openapi_json

    if args.openapi:
        sys.stdout.write(openapi_json())
        return 0
    settings = load_settings({"ray_address": args.address} if args.address else {})  # before Ray starts
    from .service.serve import serve_api

    serve_api(settings, args.host, args.port)
    return 0


COMMANDS = {"run": _cmd_run, "submit": _cmd_submit, "logs": _cmd_logs, "stop": _cmd_stop, "jobs": _cmd_jobs,
            "resume": _cmd_resume,
            "status": _cmd_status, "finalize": _cmd_finalize, "report": _cmd_report, "serve": _cmd_serve,
            "world": _cmd_world, "train": _cmd_train, "bench": _cmd_bench, "schema": _cmd_schema,
            "probe": _cmd_probe, "export": _cmd_export}


# Commands whose storage failures (no credentials, access denied, no endpoint) are the user's to fix.
_STORAGE_COMMANDS = frozenset({"run", "resume", "status", "finalize", "report", "export"})


def main(argv: list[str] | None = None) -> int:
    import contextlib

    from .output.storage import report_retries, storage_errors

    args = _parser().parse_args(argv)
    report_retries()
    uri = getattr(args, "uri", None) or getattr(args, "output", None) or "the job's storage"
    storing = args.command in _STORAGE_COMMANDS
    try:
        with storage_errors(uri, _given_options(args)) if storing else contextlib.nullcontext():
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # here, so that a reader gone early (`| head`) is caught below
            return code
    except UserError as e:
        # The job stops on this one cause; units still in flight fail of it too, and Ray would print
        # each of their tracebacks after this line when their results are dropped unread.
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C: a user's choice, not a crash
        output = getattr(args, "uri", None) or "OUTPUT"
        resumable = f" (committed units are kept: `dde resume {output}` continues the job)" if storing else ""
        print(f"interrupted{resumable}", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:  # `dde status OUT | head`: the reader left; as the Python docs advise, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
