"""Direct, loop-by-loop evaluation of the docs/spec.md formulas in Python floats (float64).

Deliberately independent of lmKAN's reference: no torch ops, no vectorisation, the
formulas exactly as docs/spec.md writes them. Only for small sizes.
"""
import math


def laplace_cdf(v):
    return 0.5 * math.exp(v) if v <= 0 else 1.0 - 0.5 * math.exp(-v)


def laplace_icdf(u):
    return math.log(2 * u) if u <= 0.5 else -math.log(2 * (1 - u))


def cdf_nodes(G):
    g = [0.0] * (G + 1)
    for i in range(1, G):
        g[i] = laplace_icdf(i / G)
    g[0] = 2 * g[1] - g[2]
    g[G] = 2 * g[G - 1] - g[G - 2]
    return g


def uniform_nodes(G, w):
    return [-w / 2 + w * i / G for i in range(G + 1)]


def cell(v, g, uniform=False, width=None):
    G = len(g) - 1
    if uniform:
        s = (v + width / 2) * G / width
        i = min(max(math.floor(s), 0), G - 1)
        return i, s - i
    i = min(max(math.floor(G * laplace_cdf(v)), 0), G - 1)
    return i, (v - g[i]) / (g[i + 1] - g[i])


def lmkan2d(x, P, g):
    """x: list [N_in] of floats; P: nested [G+1][G+1][N_out][N_pairs]. Returns (y, dy/dx, dy/dP).

    dy/dx as [N_out][N_in]; dy/dP as a dict {(a, b, o, p): weight} per output o.
    """
    n_out, n_pairs = len(P[0][0]), len(P[0][0][0])
    y = [0.0] * n_out
    dydx = [[0.0] * (2 * n_pairs) for _ in range(n_out)]
    dydp = [dict() for _ in range(n_out)]
    for p in range(n_pairs):
        i1, d1 = cell(x[2 * p], g)
        i2, d2 = cell(x[2 * p + 1], g)
        h1, h2 = g[i1 + 1] - g[i1], g[i2 + 1] - g[i2]
        for o in range(n_out):
            p00, p01 = P[i1][i2][o][p], P[i1][i2 + 1][o][p]
            p10, p11 = P[i1 + 1][i2][o][p], P[i1 + 1][i2 + 1][o][p]
            y[o] += (1 - d1) * (1 - d2) * p00 + (1 - d1) * d2 * p01 + d1 * (1 - d2) * p10 + d1 * d2 * p11
            dydx[o][2 * p] = ((1 - d2) * (p10 - p00) + d2 * (p11 - p01)) / h1
            dydx[o][2 * p + 1] = ((1 - d1) * (p01 - p00) + d1 * (p11 - p10)) / h2
            for (a, b), w in (((0, 0), (1 - d1) * (1 - d2)), ((0, 1), (1 - d1) * d2),
                              ((1, 0), d1 * (1 - d2)), ((1, 1), d1 * d2)):
                dydp[o][(i1 + a, i2 + b, o, p)] = w
    return y, dydx, dydp


def lmkan1d(x, C, g, uniform=False, width=None):
    """x: [N_in]; C: [G+1][N_out][N_in]. Returns (y, dy/dx [N_out][N_in])."""
    n_out, n_in = len(C[0]), len(C[0][0])
    y = [0.0] * n_out
    dydx = [[0.0] * n_in for _ in range(n_out)]
    for i in range(n_in):
        k, d = cell(x[i], g, uniform, width)
        h = g[k + 1] - g[k]
        for o in range(n_out):
            y[o] += (1 - d) * C[k][o][i] + d * C[k + 1][o][i]
            dydx[o][i] = (C[k + 1][o][i] - C[k][o][i]) / h
    return y, dydx


def hessian2d(P, g):
    G = len(g) - 1
    n_out, n_pairs = len(P[0][0]), len(P[0][0][0])
    total = 0.0
    for o in range(n_out):
        for p in range(n_pairs):
            acc = 0.0
            for a in range(1, G):
                hma, hpa = g[a] - g[a - 1], g[a + 1] - g[a]
                for b in range(1, G):
                    hmb, hpb = g[b] - g[b - 1], g[b + 1] - g[b]
                    f = lambda i, j: P[i][j][o][p]  # noqa: E731
                    fxx = 2 / (hma + hpa) * ((f(a + 1, b) - f(a, b)) / hpa - (f(a, b) - f(a - 1, b)) / hma)
                    fyy = 2 / (hmb + hpb) * ((f(a, b + 1) - f(a, b)) / hpb - (f(a, b) - f(a, b - 1)) / hmb)
                    fxy = (f(a + 1, b + 1) - f(a + 1, b - 1) - f(a - 1, b + 1) + f(a - 1, b - 1)) / (
                        (hma + hpa) * (hmb + hpb))
                    acc += fxx ** 2 + 2 * fxy ** 2 + fyy ** 2
            total += acc / (G - 1) ** 2
    return total


def second_diff1d(C, g):
    G = len(g) - 1
    n_out, n_in = len(C[0]), len(C[0][0])
    total = 0.0
    for o in range(n_out):
        for i in range(n_in):
            acc = 0.0
            for j in range(1, G):
                hm, hp = g[j] - g[j - 1], g[j + 1] - g[j]
                f2 = 2 / (hm + hp) * ((C[j + 1][o][i] - C[j][o][i]) / hp - (C[j][o][i] - C[j - 1][o][i]) / hm)
                acc += f2 ** 2
            total += acc / (G - 1)
    return total
