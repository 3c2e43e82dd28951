"""The reference classifier behind label fidelity (estimators.label_fidelity), and its cache
(runs layer: it trains on a data set and keeps a file per user).

The classifier is a plain torch MLP (pixels -> 256 softplus units -> classes; an ordinary
supervised net, not a Pyro model) trained with cross-entropy on the grey training images, one
per data set, cached as tensors at ~/.cache/pyro-vae/classifiers/<dataset>.pt (or a path you
give). It scores mean images (grey pixel probabilities), the same kind of input it trained on.
"""

import json
from pathlib import Path

import torch
from torch.nn import functional as F

from ..data import batches, load_dataset
from ..errors import UserError
from ..estimators import r_squared
from ..files import atomic_write, cache_dir, write_error
from ..nets import MLP

FORMAT = "pyro-vae-classifier/1"
SETTINGS = {"hidden": 256, "steps": 4000, "batch_size": 128, "lr": 1e-3, "seed": 0}  # 4000 steps: ~9 epochs of
# Fashion-MNIST, ~350 of the small digits set; a few seconds to a minute on one CPU thread


def classifier_path(dataset):
    return cache_dir() / "classifiers" / f"{dataset}.pt"


def train_classifier(dataset, data_dir=None, device="cpu", progress=True, **settings):
    """An MLP trained on the grey training split of `dataset`: (net, its test accuracy)."""
    s = {**SETTINGS, **settings}
    if progress:
        print(f"training the reference classifier for {dataset} ({s['steps']} steps; once, then cached)", flush=True)
    torch.manual_seed(s["seed"])
    data = load_dataset(dataset, data_dir, device, binarize=False, seed=s["seed"])
    x, y = data.splits["train"]
    net = MLP(data.x_dim, s["hidden"], data.n_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=s["lr"])
    steps_per_epoch = -(-len(x) // s["batch_size"])
    for epoch in range(-(-s["steps"] // steps_per_epoch)):
        for idx in batches(len(x), s["batch_size"], device=device):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    accuracy = classify_accuracy(net, *data.splits["test"])
    if progress:
        print(f"reference classifier for {dataset}: test accuracy {accuracy:.4f} (grey test images)")
    return net, accuracy, {**s, "in_dim": data.x_dim, "n_classes": data.n_classes}


@torch.no_grad()
def classify_accuracy(net, x, y):
    return (net(x).argmax(-1) == y).float().mean().item()


def reference_classifier(dataset, data_dir=None, device="cpu", path=None, progress=True):
    """The cached reference classifier of `dataset` (trained and saved on first use).

    Returns a dict: `net` (eval mode, on `device`), `test_accuracy` on the real (grey) test
    split, and `path`. The file holds tensors and plain data only (loads with weights_only)."""
    cached = path is None
    path = Path(classifier_path(dataset) if cached else path)
    hint = "; delete it to retrain" if cached else ""
    if path.is_file():
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:
            raise UserError(f"{path}: not a loadable classifier file ({type(e).__name__}){hint}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("dataset") != dataset:
            raise UserError(f"{path}: not a pyro-vae reference classifier for {dataset}{hint}")
        try:
            s = json.loads(state["settings"])
            if not isinstance(s, dict):
                raise TypeError("settings are not a JSON object")
            if any(s.get(k) != v for k, v in SETTINGS.items()):  # trained with other settings: retrain
                return _train_and_save(dataset, data_dir, device, path, progress)
            net = MLP(s["in_dim"], s["hidden"], s["n_classes"]).to(device)
            net.load_state_dict(state["net"])
            accuracy = float(state["test_accuracy"])
        except (KeyError, TypeError, ValueError, RuntimeError, RecursionError) as e:
            raise UserError(f"{path}: a damaged reference classifier file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:80] if str(e) else 'missing entry'}){hint}") from None
        net.eval()
        return {"net": net, "test_accuracy": accuracy, "path": str(path)}
    if path.exists():
        raise UserError(f"--classifier {path} is not a file")
    return _train_and_save(dataset, data_dir, device, path, progress)


def _train_and_save(dataset, data_dir, device, path, progress):
    net, accuracy, s = train_classifier(dataset, data_dir, device, progress)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path.parent, e) from None
    state = {"format": FORMAT, "dataset": dataset, "settings": json.dumps(s),
             "net": net.state_dict(), "test_accuracy": accuracy}
    atomic_write(path, lambda f: torch.save(state, f))
    return {"net": net, "test_accuracy": accuracy, "path": str(path)}


def labels_alone(data, hidden, seed=0, steps=4000, batch_size=128, lr=1e-3):
    """The baseline of a semi-supervised run: the same network as m2's q(y|x) (an MLP of `hidden`
    softplus units), trained with cross-entropy on the training examples whose label is kept
    (label >= 0) and nothing else. Returns its test accuracy. Inputs are binarized as m2's are."""
    torch.manual_seed(seed)
    x, y = data.splits["train"]
    known = (y >= 0).nonzero().squeeze(1)
    x, y = x[known], y[known]
    net = MLP(data.x_dim, hidden, data.n_classes).to(x.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(-(-steps // -(-len(x) // batch_size))):
        for idx in batches(len(x), batch_size, device=x.device):
            batch = torch.bernoulli(x[idx]) if data.binarized else x[idx]
            loss = F.cross_entropy(net(batch), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    return classify_accuracy(net, *data.splits["test"])


def reference_predictor(data, hidden=256, seed=0, steps=2000, batch_size=128, lr=1e-3, progress=True):
    """For your own data: an MLP that reads y off x, trained on the training split (cross-entropy
    for a class label, binary cross-entropy per attribute, squared error per covariate), the
    yardstick of `estimators.label_fidelity` and `estimators.condition_agreement`. Trained afresh each time (a few seconds on
    data of the size of one's own), announced in one line. Returns {"net", "kind", "test_score"}:
    the share of test attributes it reads right, or its R^2 per covariate on the test split."""
    if progress:
        print(f"training the reference predictor of {data.condition} ({steps} steps)", flush=True)
    torch.manual_seed(seed)
    x, c = data.splits["train"]
    if data.condition == "label":
        net = MLP(data.x_dim, hidden, data.n_classes).to(x.device)
        loss_fn = F.cross_entropy
    else:
        net = MLP(data.x_dim, hidden, c.shape[1]).to(x.device)
        mean, sd = c.mean(0), c.std(0).clamp(min=1e-6)
        loss_fn = (lambda out, c: F.binary_cross_entropy_with_logits(out, c)) if data.condition == "attributes" else \
            (lambda out, c: F.mse_loss(out, (c - mean) / sd))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(-(-steps // -(-len(x) // batch_size))):
        for idx in batches(len(x), batch_size, device=x.device):
            loss = loss_fn(net(x[idx]), c[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    net.eval()
    if data.condition == "label":
        accuracy = classify_accuracy(net, *data.splits["test"])
        return {"net": net, "test_accuracy": accuracy, "kind": "label", "test_score": [accuracy]}
    if data.condition == "attributes":
        read = lambda images: (net(images) > 0).float()  # noqa: E731
    else:
        read = lambda images: net(images) * sd + mean  # noqa: E731
    x_test, c_test = data.splits["test"]
    with torch.no_grad():
        predicted = read(x_test)
    if data.condition == "attributes":
        score = (predicted == c_test).float().mean(0).tolist()
    else:
        score = r_squared(predicted, c_test).tolist()
    return {"read": read, "kind": data.condition, "test_score": score}

