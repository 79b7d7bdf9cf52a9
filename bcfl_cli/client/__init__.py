"""The client of a bcfl node: what ``bcfl join``, ``members``, ``submit``, ``status`` and
``model export`` do, as a library (the commands parse, call one function here and render).

``transport`` signs every request (an ``httpx.Auth`` flow) over one pooled client; ``api`` is
the node's /v1 API answering with the wire models (``bcfl_cli.wire.schemas``); one module per
operation builds on them. Nothing here imports ``bcfl_cli.node``: the node and its members'
commands share only ``bcfl_cli.wire``. Nothing a node says is trusted that can be checked
(genesis against its document, blobs against their hashes, blocks with every rule), every
wait is bounded, and a refusal is reported with the node's own code and one-line reason.
"""

from bcfl_cli.client.address import node_url
from bcfl_cli.client.api import DEFAULT_WAIT_S, NodeApi, Progress
from bcfl_cli.client.export import ExportOutcome, export_model, round_models
from bcfl_cli.client.join import (
    JoinOutcome,
    RemoteGenesis,
    check_pinned_hash,
    fetch_genesis,
    join_consortium,
    parse_roles,
)
from bcfl_cli.client.members import (
    MemberChange,
    MembersView,
    approve_member,
    members_view,
    remove_member,
)
from bcfl_cli.client.state import current_state, local_state, replay_state
from bcfl_cli.client.status import local_status, node_status
from bcfl_cli.client.submit import (
    SubmitOutcome,
    UpdateFile,
    build_update_tx,
    ensure_plan_running,
    find_verdict,
    latest_update,
    push_to_peers,
    read_update,
    submit_update,
    updates_dir,
)
from bcfl_cli.client.transport import RequestSigner, SignedClient
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.schemas import StatusResponse, TxStatus

__all__ = [
    "DEFAULT_WAIT_S",
    "ExportOutcome",
    "JoinOutcome",
    "MemberChange",
    "MembersView",
    "NodeApi",
    "Progress",
    "Refusal",
    "RemoteGenesis",
    "RequestSigner",
    "SignedClient",
    "StatusResponse",
    "SubmitOutcome",
    "TxStatus",
    "UpdateFile",
    "approve_member",
    "build_update_tx",
    "check_pinned_hash",
    "current_state",
    "ensure_plan_running",
    "export_model",
    "fetch_genesis",
    "find_verdict",
    "join_consortium",
    "latest_update",
    "local_state",
    "local_status",
    "members_view",
    "node_status",
    "node_url",
    "parse_roles",
    "push_to_peers",
    "read_update",
    "remove_member",
    "replay_state",
    "round_models",
    "submit_update",
    "updates_dir",
]
