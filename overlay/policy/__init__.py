"""Network policy: who may talk to whom, by labels (issue 20).

On the ground floor beside overlay/model.py: `model` is the policy document and its parser,
`labels` the Kubernetes label rules endpoint records are checked against, `evaluate` the
reference evaluator (pure and slow: the property tests and trace's explanation use it; the
switch enforces the same semantics with flows built in overlay/dataplane/).
"""
