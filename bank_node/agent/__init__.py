"""The bank node agent: the HTTP side of the federated protocol (``fedfraud bank ...``).

:class:`~bank_node.agent.client.ConsortiumClient` speaks the consortium API,
:class:`~bank_node.agent.http_channel.HttpChannel` carries the secure sums over it,
:mod:`~bank_node.agent.ceremony` shares the HE key between banks, and
:class:`~bank_node.agent.runner.BankAgent` polls for runs and takes part in them. Everything the
node keeps between restarts lives in a :class:`~bank_node.agent.state.StateDir`.
"""
