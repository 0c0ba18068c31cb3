import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from timetuning.eval.pca import fit_standard_pca


def _data(n=500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3, 0.1, d)[:, None]
    x = rng.normal(size=(n, d)) @ mixing + 40.0  # a large offset: the streamed moments must not lose it
    x[:, 3] = 7.0  # a constant feature: scale 1, like StandardScaler
    return x.astype(np.float32)


def test_streamed_fit_equals_sklearn_scaler_then_pca_up_to_sign():
    x = _data()
    pca = fit_standard_pca([x[:123], x[123:400], x[400:]], dim=5)
    ref = PCA(n_components=5, svd_solver="full").fit(StandardScaler().fit_transform(x.astype(np.float64)))
    ours = pca.transform(torch.from_numpy(x)).numpy()
    theirs = ref.transform(StandardScaler().fit_transform(x.astype(np.float64)))
    signs = np.sign((ours * theirs).sum(0))
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-4)


def test_chunking_does_not_change_the_fit_and_dim_is_capped():
    x = _data(n=60, d=8, seed=1)
    one = fit_standard_pca([x], dim=50)
    many = fit_standard_pca(np.array_split(x, 7), dim=50)
    assert one.dim == 8
    torch.testing.assert_close(one.transform(torch.from_numpy(x)), many.transform(torch.from_numpy(x)),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no features"):
        fit_standard_pca([], dim=3)
