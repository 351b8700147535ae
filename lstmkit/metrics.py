"""Classification metrics from labels and predicted probabilities (scikit-learn does the counting)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, label_names: list[str]) -> dict:
    """labels: [N] class indices; probabilities: [N, C] (rows sum to 1).

    Returns accuracy, loss (mean cross-entropy, nats), precision, recall, f1 (of the positive class, index 1,
    for two classes; macro averages for more), roc_auc (one-vs-rest macro for more than two classes; None
    when only one class is present) and the confusion matrix (rows: true class, columns: predicted).
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = list(range(len(label_names)))
    predicted = probabilities.argmax(axis=1)
    eps = 1e-12
    loss = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0)).mean())
    binary = len(label_names) == 2
    average = "binary" if binary else "macro"
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, average=average, pos_label=1, zero_division=0
    )
    present = np.unique(labels)
    if len(present) < 2:
        roc_auc = None
    elif binary:
        roc_auc = float(skm.roc_auc_score(labels, probabilities[:, 1]))
    else:
        roc_auc = float(skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=classes))
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": loss,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc,
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
        "examples": int(len(labels)),
    }
