"""What a backend's compiler takes: checks of built modules against a target's documented constraints.

    from hlo.targets import neuron
    for violation in neuron.check(module):
        print(violation)
"""
