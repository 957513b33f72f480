"""The tuning study (docs/trebuchet_tuning_study.py) trains exactly as trebuchet.py does, so its rows stand for
the script's settings: the same parameters, bit for bit, after a few steps from the same streams."""

import argparse

import numpy as np

import autodiff as ad
import trebuchet as T


def test_the_study_trains_exactly_as_the_script(docs_study):
    study = docs_study("trebuchet_tuning_study")
    curve = T.ReachCurve(-16.0, 16.0, n=17, n_iter=15)
    steps, batch, lr, beta2 = 12, 32, 4e-2, 0.99
    nets = []
    for use_study in (True, False):
        streams = ad.runs.random_streams(0, *T.STREAMS)
        net = T.make_aimer(streams["init"], 16)
        if use_study:
            options = argparse.Namespace(steps=steps, batch=batch, lr=lr, beta2=beta2, warmup=0, floor=0.0, ema=0.0)
            study.train(net, streams["train"], options, curve)
        else:
            T.train(net, streams["train"], steps, batch, lr, log_every=1e9, reach_curve=curve, beta2=beta2)
        nets.append(net)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert np.array_equal(a.data, b.data)
    assert not np.array_equal(nets[0].parameters()[0].data, T.make_aimer(
        ad.runs.random_streams(0, *T.STREAMS)["init"], 16).parameters()[0].data)    # it did train
