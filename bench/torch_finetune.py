"""The seed article's PyTorch transfer-learning loop, as the baseline of `npm run bench:finetune`.

    python3 bench/torch_finetune.py --data DIR [--keras-model DIR/model.json] [--head-epochs 10]
        [--tune-epochs 5] [--batch 32] [--size 224] [--head-lr 1e-3] [--tune-lr 1e-5] [--threads 2]

DIR holds train/<class>/*.png and val/<class>/*.png (torchvision ImageFolder). The network is
torchvision's mobilenet_v2 with the article's recipe: freeze `features`, train a new classifier
(Dropout 0.2 + Linear 1280 -> classes) with Adam, then unfreeze the last block (features[17],
features[18]: Keras' block_16 + Conv_1) and train it with the classifier at a lower lr.

Weights: with --keras-model, the SAME Keras MobileNetV2 weights our pipeline loads (nsfwjs's,
decoded by scripts/decode-nsfwjs.ts) are copied into the torchvision modules, with Keras'
BatchNorm epsilon (1e-3) and its bottom/right zero padding before stride-2 convolutions, so
both sides compute the same function. Without it the network is randomly initialized (wall time
is still comparable; accuracy is not). Preprocessing is the pipeline's: Resize((size, size)),
RandomHorizontalFlip for training, ToTensor ([0, 1], what nsfwjs's model expects), no Normalize.

Two deliberate differences from the article's loop, both in the baseline's favour or neutral:
frozen BatchNorm layers stay in inference mode (model.train() would otherwise update their
running statistics, which a frozen network must not do; the pipeline keeps them frozen too),
and validation runs once at the end of each phase (the article has no validation at all).

Prints one JSON line on stdout: wall seconds (process start to end), phase seconds, val accuracy
after each phase, peak RSS.
"""
import time

STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402

IMPORTED = time.time()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="folder with train/ and val/ class folders")
    parser.add_argument("--keras-model", help="TF.js layers model.json of a Keras MobileNetV2 (float32 weights) to copy")
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--tune-epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--tune-lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def read_keras_weights(model_json: str) -> dict[str, np.ndarray]:
    """name -> array from a TF.js model.json + its float32 weight files."""
    import os

    with open(model_json) as f:
        manifest = json.load(f)["weightsManifest"]
    folder = os.path.dirname(model_json)
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join(open(os.path.join(folder, p), "rb").read() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec["dtype"] != "float32" or "quantization" in spec:
                raise SystemExit(f"{spec['name']}: only float32 weights are supported (decode without --keep-quantized)")
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            weights[spec["name"]] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).reshape(spec["shape"])
            offset += count * 4
    return weights


def keras_layers_of(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(Keras layer name, torch module, 'conv' | 'depthwise' | 'bn') for every weight of the features."""
    features = model.features
    pairs: list[tuple[str, nn.Module, str]] = [("Conv1", features[0][0], "conv"), ("bn_Conv1", features[0][1], "bn")]
    block = features[1].conv  # t=1: depthwise, project, BN
    pairs += [
        ("expanded_conv_depthwise", block[0][0], "depthwise"),
        ("expanded_conv_depthwise_BN", block[0][1], "bn"),
        ("expanded_conv_project", block[1], "conv"),
        ("expanded_conv_project_BN", block[2], "bn"),
    ]
    for index in range(2, 18):  # features[2..17] = block_1..block_16: expand, depthwise, project, BN
        name = f"block_{index - 1}"
        conv = features[index].conv
        pairs += [
            (f"{name}_expand", conv[0][0], "conv"),
            (f"{name}_expand_BN", conv[0][1], "bn"),
            (f"{name}_depthwise", conv[1][0], "depthwise"),
            (f"{name}_depthwise_BN", conv[1][1], "bn"),
            (f"{name}_project", conv[2], "conv"),
            (f"{name}_project_BN", conv[3], "bn"),
        ]
    pairs += [("Conv_1", features[18][0], "conv"), ("Conv_1_bn", features[18][1], "bn")]
    return pairs


def load_keras_weights(model: nn.Module, model_json: str) -> int:
    """Copies the Keras weights into torchvision's modules; returns the number of scalars copied."""
    weights = read_keras_weights(model_json)
    copied = 0
    with torch.no_grad():
        for name, module, kind in keras_layers_of(model):
            if kind == "bn":
                sources = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
                for attr, key in sources.items():
                    value = torch.from_numpy(weights[f"{name}/{key}"].copy())
                    getattr(module, attr).copy_(value)
                    copied += value.numel()
                module.eps = 1e-3  # Keras' BatchNormalization default
            else:
                key = f"{name}/depthwise_kernel" if kind == "depthwise" else f"{name}/kernel"
                # Keras: [h, w, in, out] (depthwise: [h, w, channels, 1]); torch: [out, in/groups, h, w].
                axes = (2, 3, 0, 1) if kind == "depthwise" else (3, 2, 0, 1)
                value = torch.from_numpy(np.ascontiguousarray(weights[key].transpose(axes)))
                if tuple(value.shape) != tuple(module.weight.shape):
                    raise SystemExit(f"{name}: Keras shape {tuple(value.shape)} != torch {tuple(module.weight.shape)}")
                module.weight.copy_(value)
                copied += value.numel()
    # Keras pads stride-2 convolutions by (0, 1) rows/columns (bottom/right); torchvision by 1 on
    # every side. Same weights, shifted windows: pad like Keras so the features are the same.
    for module in model.features.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.padding = (0, 0)
            module.register_forward_pre_hook(lambda _m, inputs: (F.pad(inputs[0], (0, 1, 0, 1)),))
    return copied


def set_frozen_bn_eval(model: nn.Module) -> None:
    """BatchNorm in inference mode (running statistics used and kept), as a frozen base needs."""
    for module in model.features.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def train_phase(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> list[dict]:
    """The article's train_model loop (with frozen BatchNorm kept in inference mode)."""
    criterion = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        start = time.time()
        model.train()
        set_frozen_bn_eval(model)
        running_loss = 0.0
        correct = 0
        for inputs, labels in loader:
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            correct += int((outputs.argmax(1) == labels).sum())
        n = len(loader.dataset)
        history.append({"epoch": epoch, "loss": round(running_loss / n, 4), "acc": round(correct / n, 4), "seconds": round(time.time() - start, 2)})
        print(f"epoch {epoch + 1}/{epochs} loss {running_loss / n:.4f} acc {correct / n:.4f} {time.time() - start:.1f}s", file=sys.stderr)
    return history


def evaluate(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in loader:
            correct += int((model(inputs).argmax(1) == labels).sum())
    return correct / len(loader.dataset)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    size = (args.size, args.size)
    # ToTensor gives [0, 1]: the Keras model expects that (the pipeline's `normalize: unit`).
    train_tf = transforms.Compose([transforms.Resize(size), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    train_set = datasets.ImageFolder(f"{args.data}/train", transform=train_tf)
    val_set = datasets.ImageFolder(f"{args.data}/val", transform=val_tf)
    train_loader = DataLoader(train_set, batch_size=args.batch, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=args.batch, shuffle=False)

    t0 = time.time()
    model = models.mobilenet_v2(weights=None)
    init = "random"
    if args.keras_model:
        load_keras_weights(model, args.keras_model)
        init = "keras"
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(model.last_channel, len(train_set.classes)))
    load_s = time.time() - t0

    # Phase 1: freeze the features, train the classifier.
    for param in model.features.parameters():
        param.requires_grad = False
    t0 = time.time()
    head_history = train_phase(model, train_loader, torch.optim.Adam(model.classifier.parameters(), lr=args.head_lr), args.head_epochs)
    head_s = time.time() - t0
    t0 = time.time()
    head_acc = evaluate(model, val_loader)
    head_eval_s = time.time() - t0

    # Phase 2: unfreeze the last block (features[17] = block_16, features[18] = Conv_1).
    tuned = [p for block in (model.features[17], model.features[18]) for p in block.parameters()]
    for param in tuned:
        param.requires_grad = True
    t0 = time.time()
    tune_history = train_phase(model, train_loader, torch.optim.Adam(tuned + list(model.classifier.parameters()), lr=args.tune_lr), args.tune_epochs)
    tune_s = time.time() - t0
    t0 = time.time()
    tune_acc = evaluate(model, val_loader)
    tune_eval_s = time.time() - t0

    print(
        json.dumps(
            {
                "wall_s": round(time.time() - STARTED, 2),
                "import_s": round(IMPORTED - STARTED, 2),
                "phases": {"load": round(load_s, 2), "head": round(head_s, 2), "head_eval": round(head_eval_s, 2), "fine_tune": round(tune_s, 2), "fine_tune_eval": round(tune_eval_s, 2)},
                "val_acc": {"head": round(head_acc, 4), "fine_tune": round(tune_acc, 4)},
                "seconds_per_epoch": {"head": round(head_s / max(1, args.head_epochs), 2), "fine_tune": round(tune_s / max(1, args.tune_epochs), 2)},
                "history": {"head": head_history, "fine_tune": tune_history},
                "init": init,
                "trainable_params": {"head": sum(p.numel() for p in model.classifier.parameters()), "fine_tune": sum(p.numel() for p in tuned) + sum(p.numel() for p in model.classifier.parameters())},
                "images": {"train": len(train_set), "val": len(val_set)},
                "classes": train_set.classes,
                "epochs": {"head": args.head_epochs, "fine_tune": args.tune_epochs},
                "batch": args.batch,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
