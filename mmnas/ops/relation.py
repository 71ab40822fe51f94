"""Box relation geometry shared by every RSA block.

For boxes (x1, y1, x2, y2) in pixels and every ordered pair (i, j):
    [log(max(|cx_i - cx_j| / w_i, 1e-3)), log(max(|cy_i - cy_j| / h_i, 1e-3)),
     log(w_i / w_j), log(h_i / h_j)]
with w = x2 - x1 + 1, h = y2 - y1 + 1. Zero (padding) boxes give w = h = 1 and stay finite.
"""
import paddle
import paddle.nn.functional as F

from . import fast


def box_relation_geometry(boxes):
    """boxes [B, N, 4] -> relation geometry [B, N, N, 4]."""
    x1, y1, x2, y2 = paddle.split(boxes, 4, axis=-1)  # each [B, N, 1]
    cx = (x1 + x2) * 0.5
    cy = (y1 + y2) * 0.5
    w = (x2 - x1) + 1.0
    h = (y2 - y1) + 1.0
    # [B, N, 1] - [B, 1, N] -> [B, N, N]; row i is divided by box i's own size
    dx = paddle.log(paddle.clip(paddle.abs((cx - cx.transpose([0, 2, 1])) / w), min=1e-3))
    dy = paddle.log(paddle.clip(paddle.abs((cy - cy.transpose([0, 2, 1])) / h), min=1e-3))
    dw = paddle.log(w / w.transpose([0, 2, 1]))
    dh = paddle.log(h / h.transpose([0, 2, 1]))
    return paddle.stack([dx, dy, dw, dh], axis=-1)


class BoxRelations:
    """What the RSA blocks of one batch read: the box geometry [B, N, N, 4] and the shared
    embedding Linear(4 -> rel_size) (MMNasNet.linear_rel). Each RSA block turns them into its
    own score bias with its Linear(rel_size -> heads), `linear_r`:
        log(max(ReLU(linear_r(ReLU(linear_rel(geometry)))), 1e-6))  -> [B, heads, N, N]

    The embedding is computed once, on first use. When the caller lists every block's linear_r
    up front (`score_layers`; MMNasNet does), the first request computes all the biases with
    one product against the concatenated weights: the [B, N, N, rel_size] embedding (164 MB at
    B=64, N=100) is then read once instead of once per block, and its gradient is one product
    instead of one per block plus the sums of them. Products are per output column, so the
    values are the per-block ones. `BoxRelations.of_embedding` wraps an embedding that is
    already computed (the block tests).
    """

    def __init__(self, geometry, embed_layer, score_layers=()):
        self.geometry = geometry
        self.embed_layer = embed_layer
        self.score_layers = list(score_layers)
        self._embedding = None
        self._biases = None

    @classmethod
    def of_embedding(cls, embedding):
        relations = cls(None, None)
        relations._embedding = embedding
        return relations

    def embedding(self):
        """ReLU(linear_rel(geometry)): [B, N, N, rel_size]."""
        if self._embedding is None:
            self._embedding = F.relu(self.embed_layer(self.geometry))
        return self._embedding

    def score_bias(self, linear_r):
        """The score bias [B, heads, N, N] of the RSA block whose Linear is `linear_r`."""
        for i, layer in enumerate(self.score_layers):
            if layer is linear_r:
                if self._biases is None:
                    weight = paddle.concat([l.weight for l in self.score_layers], axis=1)
                    bias = paddle.concat([l.bias for l in self.score_layers])
                    heads = [l.weight.shape[1] for l in self.score_layers]
                    self._biases = paddle.split(self._log_bias(weight, bias), heads, axis=1)
                return self._biases[i]
        return self._log_bias(linear_r.weight, linear_r.bias)

    def _log_bias(self, weight, bias):
        # log(max(ReLU(z), 1e-6)): [B, N, N, h] -> [B, h, N, N]
        return fast.relu_clamped_log(fast.linear(self.embedding(), weight, bias), 1e-6).transpose([0, 3, 1, 2])
