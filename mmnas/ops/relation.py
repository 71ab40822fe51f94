"""Box relation geometry shared by every RSA block.

For boxes (x1, y1, x2, y2) in pixels and every ordered pair (i, j):
    [log(max(|cx_i - cx_j| / w_i, 1e-3)), log(max(|cy_i - cy_j| / h_i, 1e-3)),
     log(w_i / w_j), log(h_i / h_j)]
with w = x2 - x1 + 1, h = y2 - y1 + 1. Zero (padding) boxes give w = h = 1 and stay finite.
"""
import paddle


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
