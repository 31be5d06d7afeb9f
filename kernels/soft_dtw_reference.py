"""Plain PyTorch soft-DTW: the float64 reference the extension is tested against, and
OTAM written the way the public few-shot repositories write it (for the benchmark).

Everything here loops over cells in Python (vectorised over the batch only): slow,
but each line is one line of the recursion in soft_dtw.py's docstring, and autograd
gives its gradient.
"""
import torch

_INF = float("inf")


def _softmin(values, gamma):
    """-gamma * log(sum(exp(-v / gamma))), stable (torch.logsumexp subtracts the max)."""
    return -gamma * torch.logsumexp(torch.stack(values, 0) / -gamma, dim=0)


def soft_dtw_reference(cost: torch.Tensor, gamma: float, variant: str = "standard") -> torch.Tensor:
    """Soft-DTW of each cost matrix in cost [B, N, M] -> [B], in float64, differentiable.

    standard: R00 = 0, R_i0 = R_0j = +inf, R_ij = cost_ij + softmin(R_i-1,j-1, R_i-1,j, R_i,j-1).
    otam:     zero column padded on both sides of M; row 0 a cumulative sum; columns
              1 and M+1 take three predecessors, columns 2..M diagonal and left only.
    """
    cost = cost.to(torch.float64)
    batch, n, m = cost.shape
    if variant == "standard":
        inf = cost.new_full((batch,), _INF)
        zero = cost.new_zeros(batch)
        prev = [zero] + [inf] * m  # row 0
        for i in range(1, n + 1):
            cur = [inf]
            for j in range(1, m + 1):
                cur.append(cost[:, i - 1, j - 1] + _softmin([prev[j - 1], prev[j], cur[j - 1]], gamma))
            prev = cur
        return prev[m]
    if variant == "otam":
        d = torch.nn.functional.pad(cost, (1, 1))  # [B, N, M + 2]
        zero = cost.new_zeros(batch)
        prev = [zero]
        for c in range(1, m + 2):
            prev.append(d[:, 0, c] + prev[c - 1])
        for row in range(1, n):
            cur = [zero]
            cur.append(d[:, row, 1] + _softmin([prev[0], prev[1], cur[0]], gamma))
            for c in range(2, m + 1):
                cur.append(d[:, row, c] + _softmin([prev[c - 1], cur[c - 1]], gamma))
            cur.append(d[:, row, m + 1] + _softmin([prev[m], prev[m + 1], cur[m]], gamma))
            prev = cur
        return prev[m + 1]
    raise ValueError(f"variant must be 'standard' or 'otam', got {variant!r}")


def otam_cum_dist_loop(dists: torch.Tensor, lbda: float = 0.1) -> torch.Tensor:
    """OTAM cumulative distance as the public few-shot repositories write it
    (OTAM_cum_dist in e.g. TRX / HyRSM): dists [Q, S, N, M] -> [Q, S].

    Kept faithful for the benchmark, including its unstabilised log(sum(exp)): it
    underflows to inf for large distances / small lambda. Do not use for accuracy.
    """
    dists = torch.nn.functional.pad(dists, (1, 1), "constant", 0)
    cum_dists = torch.zeros(dists.shape, device=dists.device, dtype=dists.dtype)
    for m in range(1, dists.shape[3]):
        cum_dists[:, :, 0, m] = dists[:, :, 0, m] + cum_dists[:, :, 0, m - 1]
    for l in range(1, dists.shape[2]):
        cum_dists[:, :, l, 1] = dists[:, :, l, 1] - lbda * torch.log(
            torch.exp(-cum_dists[:, :, l - 1, 0] / lbda)
            + torch.exp(-cum_dists[:, :, l - 1, 1] / lbda)
            + torch.exp(-cum_dists[:, :, l, 0] / lbda))
        for m in range(2, dists.shape[3] - 1):
            cum_dists[:, :, l, m] = dists[:, :, l, m] - lbda * torch.log(
                torch.exp(-cum_dists[:, :, l - 1, m - 1] / lbda)
                + torch.exp(-cum_dists[:, :, l, m - 1] / lbda))
        cum_dists[:, :, l, -1] = dists[:, :, l, -1] - lbda * torch.log(
            torch.exp(-cum_dists[:, :, l - 1, -2] / lbda)
            + torch.exp(-cum_dists[:, :, l - 1, -1] / lbda)
            + torch.exp(-cum_dists[:, :, l, -2] / lbda))
    return cum_dists[:, :, -1, -1]


def otam_distance_loop(frame_sim: torch.Tensor, lbda: float = 0.1) -> torch.Tensor:
    """Public-repo OTAM distance from frame cosine similarities [Q, S, N, M] -> [Q, S]:
    1 - cos, alignment in both directions, summed."""
    dists = 1 - frame_sim
    return otam_cum_dist_loop(dists, lbda) + otam_cum_dist_loop(dists.transpose(-1, -2), lbda)
