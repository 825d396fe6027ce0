import numpy as np
import torch

from rtgen.engine.batchnorm import has_batchnorm, recalibrate_batchnorm


def test_recalibration_sets_running_stats_to_the_data_and_keeps_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    rng = np.random.default_rng(0)
    patients = [rng.normal(5.0, 2.0, (7, 2, 4, 4)).astype(np.float32) for _ in range(3)]
    assert has_batchnorm(net) and not has_batchnorm(torch.nn.Linear(2, 2))
    assert recalibrate_batchnorm(net, patients, batch_size=7) == 21
    with torch.no_grad():
        feats = net[0](torch.from_numpy(np.concatenate(patients)))
    torch.testing.assert_close(net[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    # update_bn averages the per-batch unbiased variances; equal-sized batches of one mean ~ the pooled variance
    torch.testing.assert_close(net[1].running_var, feats.var((0, 2, 3)), rtol=0.05, atol=0.05)
    assert not net.training
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v)
