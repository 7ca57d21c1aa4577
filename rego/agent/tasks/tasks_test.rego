package agent.tasks_test

import data.agent.tasks

# ---------------------------------------------------------------------------
# Building inputs (the task API's input document)

reader := "spiffe://demo.local/agent/reader"

writer := "spiffe://demo.local/agent/writer"

ops := "spiffe://demo.local/agent/ops/backup"

assistant := "spiffe://demo.local/agent/assistant"

# The tests' clock: time.now_ns is fixed at this second.
now := 1700000000

identity(id) := {
	"spiffe_id": id,
	"trust_domain": split(trim_prefix(id, "spiffe://"), "/")[0],
	"path": concat("", ["/", concat("/", array.slice(split(trim_prefix(id, "spiffe://"), "/"), 1, 100))]),
	"identity_source": "jwt_svid",
	"claims": {"sub": id},
}

open(id, purpose, scopes, ttl) := {
	"operation": "open",
	"agent": identity(id),
	"request": {"purpose": purpose, "scopes": scopes, "ttl_seconds": ttl, "intent": null},
	"parent": null,
	"delegate_to": null,
	"delegation": {"chain": [], "depth": 0},
	"open_tasks": 0,
}

# The caller's own task, expiring `left` seconds from now.
parent(purpose, scopes, left) := {
	"id": "task-1",
	"purpose": purpose,
	"scopes": scopes,
	"issued_at": now - 60,
	"expires_at": now + left,
	"parent_id": null,
	"root_id": "task-1",
	"depth": 0,
}

triage := parent("triage", ["docs:read", "tickets:read", "tickets:write"], 900)

# The caller (not delegated itself) delegates to `to` out of task `p`.
delegate(id, to, p, scopes, ttl) := {
	"operation": "delegate",
	"agent": identity(id),
	"request": {"purpose": p.purpose, "scopes": scopes, "ttl_seconds": ttl, "intent": null},
	"parent": p,
	"delegate_to": to,
	"delegation": {"chain": [id], "depth": 1},
	"open_tasks": 0,
}

# A caller that was itself delegated to through `chain` delegates further.
redelegate(id, chain, to, p, scopes, ttl) := object.union(
	delegate(id, to, p, scopes, ttl),
	{"delegation": {"chain": array.concat([id], chain), "depth": count(chain) + 1}},
)

decide(inp) := d if {
	d := tasks.decision with input as inp with time.now_ns as now * 1000000000
}

denied(reasons) := {"verdict": "deny", "reasons": reasons, "scopes": [], "ttl_seconds": 0}

# ---------------------------------------------------------------------------
# Opening a task

test_writer_opens_triage if {
	decide(open(writer, "triage", ["tickets:write", "docs:read"], 600)) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/writer may open a task for purpose triage with scopes docs:read, tickets:write for 600 seconds"],
		"scopes": ["docs:read", "tickets:write"],
		"ttl_seconds": 600,
	}
}

test_ttl_is_cut_to_the_maximum if {
	decide(open(writer, "cleanup", ["records:delete"], 3600)) == {
		"verdict": "allow",
		"reasons": [
			"agent spiffe://demo.local/agent/writer may open a task for purpose cleanup with scope records:delete for 1800 seconds",
			"the requested 3600 seconds were cut to the policy's maximum of 1800",
		],
		"scopes": ["records:delete"],
		"ttl_seconds": 1800,
	}
	decide(open(writer, "cleanup", ["records:delete"], 1800)).reasons == ["agent spiffe://demo.local/agent/writer may open a task for purpose cleanup with scope records:delete for 1800 seconds"]
	decide(open(writer, "cleanup", ["records:delete"], 1)).ttl_seconds == 1
}

test_duplicate_scopes_are_granted_once if {
	decide(open(reader, "research", ["docs:read", "docs:read"], 60)).scopes == ["docs:read"]
}

test_reader_opens_triage_for_reading if {
	d := decide(open(reader, "triage", ["docs:read", "records:read", "tickets:read"], 300))
	d.verdict == "allow"
	d.scopes == ["docs:read", "records:read", "tickets:read"]
}

test_reader_may_not_open_triage_with_a_write if {
	decide(open(reader, "triage", ["docs:read", "tickets:write"], 300)) == denied(["agent spiffe://demo.local/agent/reader may not be granted scope tickets:write for purpose triage: none of its roles (reader) grants it"])
}

test_reader_may_not_open_a_writers_purpose if {
	decide(open(reader, "billing", ["docs:read", "payments:write"], 300)) == denied([
		"agent spiffe://demo.local/agent/reader may not be granted scope payments:write for purpose billing: none of its roles (reader) grants it",
		"agent spiffe://demo.local/agent/reader may not open a task for purpose billing: that needs one of the roles writer, and the agent has reader",
	])
}

test_unknown_purpose if {
	decide(open(writer, "world domination", ["docs:read"], 60)) == denied(["agent spiffe://demo.local/agent/writer may not open a task for purpose world domination: the policy knows no such purpose (known purposes: billing, cleanup, outreach, research, triage)"])
}

test_scope_outside_the_purpose if {
	decide(open(writer, "research", ["docs:read", "records:delete", "email:send"], 60)).reasons == ["agent spiffe://demo.local/agent/writer may not open a task for purpose research with scopes email:send, records:delete: the purpose covers only docs:read, records:read"]
	decide(open(writer, "research", ["docs:write"], 60)).reasons == [
		"agent spiffe://demo.local/agent/writer may not be granted scope docs:write for purpose research: none of its roles (reader, writer) grants it",
		"agent spiffe://demo.local/agent/writer may not open a task for purpose research with scope docs:write: the purpose covers only docs:read, records:read",
	]
}

test_several_scopes_no_role_grants if {
	decide(open(reader, "triage", ["tickets:write", "records:delete"], 60)).reasons == [
		"agent spiffe://demo.local/agent/reader may not be granted scopes records:delete, tickets:write for purpose triage: none of its roles (reader) grants them",
		"agent spiffe://demo.local/agent/reader may not open a task for purpose triage with scope records:delete: the purpose covers only docs:read, records:read, tickets:read, tickets:write",
	]
}

test_pattern_agent_opens_research if {
	decide(open(ops, "research", ["records:read"], 120)).verdict == "allow"
	decide(open(ops, "outreach", ["docs:read"], 120)).reasons == ["agent spiffe://demo.local/agent/ops/backup may not open a task for purpose outreach: that needs one of the roles writer, and the agent has reader"]
}

test_agent_without_roles if {
	d := decide(open(ops, "research", ["docs:read"], 60)) with data.agent.config.agents as {ops: {"roles": []}}
	d.reasons == [
		"agent spiffe://demo.local/agent/ops/backup may not be granted scope docs:read for purpose research: none of its roles (no role) grants it",
		"agent spiffe://demo.local/agent/ops/backup may not open a task for purpose research: that needs one of the roles reader, writer, and the agent has no role",
	]
}

# A purpose that names no roles can be opened by nobody.
test_purpose_without_roles if {
	purposes := {"audit": {"scopes": ["docs:read"]}, "odd": {"scopes": ["docs:read"], "roles": "writer"}}
	decide(open(writer, "audit", ["docs:read"], 60)).verdict == "deny" with data.agent.config.tasks.purposes as purposes
	decide(open(writer, "odd", ["docs:read"], 60)).verdict == "deny" with data.agent.config.tasks.purposes as purposes
}

test_role_without_grantable_scopes if {
	d := decide(open(writer, "research", ["docs:read"], 60)) with data.agent.config.tasks.role_scopes as {"reader": [], "writer": null}
	d.reasons == ["agent spiffe://demo.local/agent/writer may not be granted scope docs:read for purpose research: none of its roles (reader, writer) grants it"]
}

# The declared intent is agent-asserted: it is passed along, never a reason to grant more.
test_intent_changes_nothing if {
	inp := object.union(open(reader, "triage", ["tickets:write"], 60), {"request": {"intent": {"purpose": "triage", "confidence": 1}}})
	decide(inp).verdict == "deny"
}

# ---------------------------------------------------------------------------
# Malformed requests

test_empty_scopes if {
	decide(open(writer, "triage", [], 60)) == denied(["agent spiffe://demo.local/agent/writer asked for a task for purpose triage without scopes; a task needs at least one"])
}

test_bad_scopes if {
	every scopes in ["docs:read", ["docs:read", 7], [""], null, {"docs:read": true}] {
		decide(open(writer, "triage", scopes, 60)).reasons == [sprintf("agent spiffe://demo.local/agent/writer asked for scopes %v; a list of scope names is expected", [scopes])]
	}
}

test_bad_ttl if {
	every ttl in [0, -5, 1.5, "60", null] {
		decide(open(writer, "triage", ["docs:read"], ttl)).reasons == [sprintf("agent spiffe://demo.local/agent/writer asked for a ttl_seconds of %v; a task lasts a whole number of seconds above 0", [ttl])]
	}
}

test_bad_purpose if {
	every purpose in ["", 5, null] {
		decide(open(writer, purpose, ["docs:read"], 60)).reasons == ["agent spiffe://demo.local/agent/writer asked for a task without a purpose (a non-empty string is expected)"]
	}
}

test_missing_request if {
	decide(object.remove(open(writer, "triage", ["docs:read"], 60), {"request"})) == denied(["the task request (input.request) is missing"])
	decide(object.union(open(writer, "triage", ["docs:read"], 60), {"request": "triage"})).verdict == "deny"
}

test_request_fields_missing if {
	d := decide(json.patch(open(writer, "triage", ["docs:read"], 60), [{"op": "replace", "path": "/request", "value": {}}]))
	d.reasons == [
		"agent spiffe://demo.local/agent/writer asked for a task without a purpose (a non-empty string is expected)",
		"agent spiffe://demo.local/agent/writer asked for a ttl_seconds of null; a task lasts a whole number of seconds above 0",
		"agent spiffe://demo.local/agent/writer asked for scopes null; a list of scope names is expected",
	]
}

test_unknown_operation if {
	decide(object.union(open(writer, "triage", ["docs:read"], 60), {"operation": "close"})).reasons == [`operation close is neither "open" nor "delegate"`]
	decide(object.remove(open(writer, "triage", ["docs:read"], 60), {"operation"})).reasons == [`operation null is neither "open" nor "delegate"`]
}

test_malformed_delegation if {
	bad := object.union(open(writer, "triage", ["docs:read"], 60), {"delegation": {"chain": [reader], "depth": 0}})
	decide(bad).reasons == [`input.delegation is not a delegation chain (a list of SPIFFE IDs and its length as depth): {"chain": ["spiffe://demo.local/agent/reader"], "depth": 0}`]
	decide(object.remove(open(writer, "triage", ["docs:read"], 60), {"delegation"})).verdict == "deny"
}

test_policy_without_a_maximum_ttl if {
	reason := "the policy sets no valid tasks.max_ttl_seconds, so it grants no task"
	decide(open(writer, "triage", ["docs:read"], 60)).reasons == [reason] with data.agent.config.tasks.max_ttl_seconds as null
	decide(open(writer, "triage", ["docs:read"], 60)).reasons == [reason] with data.agent.config.tasks.max_ttl_seconds as "1800"
	decide(open(writer, "triage", ["docs:read"], 60)).reasons == [reason] with data.agent.config.tasks as null
}

# ---------------------------------------------------------------------------
# Identity of the caller comes first

test_unregistered_caller if {
	decide(open("spiffe://demo.local/agent/stranger", "research", ["docs:read"], 60)) == denied(["agent spiffe://demo.local/agent/stranger is not registered in the policy"])
}

test_untrusted_caller if {
	evil := "spiffe://demo.local.evil/agent/writer"
	d := decide(open(evil, "triage", ["docs:read"], 60)) with data.agent.config.agents as {evil: {"roles": ["writer"]}}
	d.reasons == ["agent spiffe://demo.local.evil/agent/writer belongs to trust domain demo.local.evil, which this policy does not trust"]
}

test_no_caller if {
	decide(object.remove(open(writer, "triage", ["docs:read"], 60), {"agent"})).reasons == ["no verified agent identity"]
	decide({}) == denied(["no verified agent identity"])
}

test_identity_reasons_win if {
	inp := object.union(open("spiffe://demo.local/agent/stranger", "nope", [], 0), {"operation": "close"})
	decide(inp).reasons == ["agent spiffe://demo.local/agent/stranger is not registered in the policy"]
}

# ---------------------------------------------------------------------------
# Delegating

test_writer_delegates_to_reader if {
	decide(delegate(writer, reader, triage, ["tickets:read", "docs:read"], 300)) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/writer may delegate a task for purpose triage with scopes docs:read, tickets:read for 300 seconds to agent spiffe://demo.local/agent/reader (delegation depth 1)"],
		"scopes": ["docs:read", "tickets:read"],
		"ttl_seconds": 300,
	}
}

# writer -> assistant (may write) -> reader (reads only): the chain the e2e tests walk.
test_writer_delegates_to_the_assistant_and_on_to_the_reader if {
	child := decide(delegate(writer, assistant, triage, ["docs:read", "tickets:write"], 300))
	child.verdict == "allow"
	child.scopes == ["docs:read", "tickets:write"]
	mine := parent("triage", ["docs:read", "tickets:write"], 300)
	decide(redelegate(assistant, [writer], reader, mine, ["docs:read"], 60)) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/assistant may delegate a task for purpose triage with scope docs:read for 60 seconds to agent spiffe://demo.local/agent/reader (delegation depth 2)"],
		"scopes": ["docs:read"],
		"ttl_seconds": 60,
	}
	decide(redelegate(assistant, [writer], reader, mine, ["tickets:write", "records:delete"], 60)).reasons == [
		"agent spiffe://demo.local/agent/assistant may not delegate a task to spiffe://demo.local/agent/reader for purpose triage with scope records:delete: the purpose covers only docs:read, records:read, tickets:read, tickets:write",
		"agent spiffe://demo.local/agent/reader may not be granted scopes records:delete, tickets:write for purpose triage: none of its roles (reader) grants them",
		"scope widening: agent spiffe://demo.local/agent/assistant may not delegate scope records:delete, which its task task-1 (purpose triage) does not hold (it holds docs:read, tickets:write)",
	]
	decide(redelegate(assistant, [writer], ops, mine, ["docs:read"], 60)).reasons == ["agent spiffe://demo.local/agent/assistant may not delegate to spiffe://demo.local/agent/ops/backup (it may delegate to spiffe://demo.local/agent/reader)"]
}

test_writer_delegates_to_an_ops_agent if {
	decide(delegate(writer, ops, triage, ["docs:read"], 60)).verdict == "allow"
}

test_delegated_ttl_never_outlives_the_parent if {
	short := parent("triage", ["docs:read"], 100)
	decide(delegate(writer, reader, short, ["docs:read"], 300)) == {
		"verdict": "allow",
		"reasons": [
			"agent spiffe://demo.local/agent/writer may delegate a task for purpose triage with scope docs:read for 100 seconds to agent spiffe://demo.local/agent/reader (delegation depth 1)",
			"the requested 300 seconds were cut to the 100 seconds left of task task-1 (purpose triage)",
		],
		"scopes": ["docs:read"],
		"ttl_seconds": 100,
	}
}

# Part of a second counts as gone.
test_delegated_ttl_rounds_down if {
	short := parent("triage", ["docs:read"], 100)
	d := tasks.decision with input as delegate(writer, reader, short, ["docs:read"], 300)
		with time.now_ns as (now * 1000000000) + 500000000
	d.ttl_seconds == 99
}

test_delegated_ttl_is_cut_to_the_maximum if {
	long := parent("triage", ["docs:read"], 7200)
	d := decide(delegate(writer, reader, long, ["docs:read"], 3600))
	d.ttl_seconds == 1800
	d.reasons[1] == "the requested 3600 seconds were cut to the policy's maximum of 1800"
}

test_parent_without_time_left if {
	gone := parent("triage", ["docs:read"], 0)
	decide(delegate(writer, reader, gone, ["docs:read"], 60)) == denied(["agent spiffe://demo.local/agent/writer may not delegate out of task task-1 (purpose triage): it has no time left (it expires at 1700000000)"])
	decide(delegate(writer, reader, parent("triage", ["docs:read"], -30), ["docs:read"], 60)).verdict == "deny"
	decide(delegate(writer, reader, parent("triage", ["docs:read"], 1), ["docs:read"], 60)).ttl_seconds == 1
}

test_scope_widening if {
	narrow := parent("triage", ["docs:read", "tickets:read"], 900)
	decide(delegate(writer, reader, narrow, ["docs:read", "records:read"], 60)) == denied(["scope widening: agent spiffe://demo.local/agent/writer may not delegate scope records:read, which its task task-1 (purpose triage) does not hold (it holds docs:read, tickets:read)"])
	decide(delegate(writer, ops, narrow, ["docs:read", "records:read", "tickets:write"], 60)).reasons == [
		"agent spiffe://demo.local/agent/ops/backup may not be granted scope tickets:write for purpose triage: none of its roles (reader) grants it",
		"scope widening: agent spiffe://demo.local/agent/writer may not delegate scopes records:read, tickets:write, which its task task-1 (purpose triage) does not hold (it holds docs:read, tickets:read)",
	]
}

test_delegate_must_hold_a_role_for_the_scopes if {
	decide(delegate(writer, reader, triage, ["tickets:write"], 60)) == denied(["agent spiffe://demo.local/agent/reader may not be granted scope tickets:write for purpose triage: none of its roles (reader) grants it"])
}

test_delegating_to_a_non_allowed_agent if {
	p := parent("triage", ["docs:read"], 900)
	decide(delegate(reader, writer, p, ["docs:read"], 60)) == denied(["agent spiffe://demo.local/agent/reader may not delegate to spiffe://demo.local/agent/writer (it may delegate to nobody)"])
	decide(delegate(ops, reader, p, ["docs:read"], 60)).reasons == ["agent spiffe://demo.local/agent/ops/backup may not delegate to spiffe://demo.local/agent/reader (it may delegate to nobody)"]
}

test_delegating_to_an_unknown_agent if {
	stranger := "spiffe://demo.local/agent/ops/team/backup"
	decide(delegate(writer, stranger, triage, ["docs:read"], 60)).reasons == [
		"agent spiffe://demo.local/agent/writer may not delegate to spiffe://demo.local/agent/ops/team/backup (it may delegate to spiffe://demo.local/agent/assistant, spiffe://demo.local/agent/ops/*, spiffe://demo.local/agent/reader)",
		"agent spiffe://demo.local/agent/writer may not delegate to spiffe://demo.local/agent/ops/team/backup: it is not a registered agent of a trusted domain",
	]
}

# Allowed by a glob, but outside the trusted domains: still no.
test_delegating_to_an_untrusted_agent if {
	evil := "spiffe://evil.example/agent/reader"
	d := decide(delegate(writer, evil, triage, ["docs:read"], 60)) with data.agent.config.tasks.delegations as {writer: ["spiffe://**"]}
		with data.agent.config.agent_patterns as [{"pattern": "spiffe://**", "roles": ["reader"]}]
	d.reasons == ["agent spiffe://demo.local/agent/writer may not delegate to spiffe://evil.example/agent/reader: it is not a registered agent of a trusted domain"]
	decide(delegate(writer, "not a spiffe id", triage, ["docs:read"], 60)).verdict == "deny"
}

test_delegating_to_itself if {
	decide(delegate(writer, writer, triage, ["docs:read"], 60)).reasons == [
		"agent spiffe://demo.local/agent/writer may not delegate to spiffe://demo.local/agent/writer (it may delegate to spiffe://demo.local/agent/assistant, spiffe://demo.local/agent/ops/*, spiffe://demo.local/agent/reader)",
		"agent spiffe://demo.local/agent/writer may not delegate to spiffe://demo.local/agent/writer: that agent is already in the delegation chain (spiffe://demo.local/agent/writer)",
	]
	d := decide(delegate(writer, writer, triage, ["docs:read"], 60)) with data.agent.config.tasks.delegations as {writer: ["spiffe://demo.local/agent/*"]}
	d.verdict == "deny"
}

test_delegation_back_up_the_chain if {
	p := parent("triage", ["docs:read"], 900)
	inp := redelegate(reader, [writer], writer, p, ["docs:read"], 60)
	d := decide(inp) with data.agent.config.tasks.delegations as {reader: [writer]}
	d.reasons == ["agent spiffe://demo.local/agent/reader may not delegate to spiffe://demo.local/agent/writer: that agent is already in the delegation chain (spiffe://demo.local/agent/reader <- spiffe://demo.local/agent/writer)"]
}

test_delegation_patterns_from_data if {
	odd := [7, "spiffe://demo.local/agent/reader"]
	decide(delegate(writer, reader, triage, ["docs:read"], 60)).verdict == "allow" with data.agent.config.tasks.delegations as {writer: odd}
	decide(delegate(writer, ops, triage, ["docs:read"], 60)).reasons == ["agent spiffe://demo.local/agent/writer may not delegate to spiffe://demo.local/agent/ops/backup (it may delegate to 7, spiffe://demo.local/agent/reader)"] with data.agent.config.tasks.delegations as {writer: odd}
	decide(delegate(writer, reader, triage, ["docs:read"], 60)).verdict == "deny" with data.agent.config.tasks.delegations as null
}

# writer -> ops/a -> ops/b: ops/b may not hand on a third level (max 2).
test_delegation_too_deep if {
	a := "spiffe://demo.local/agent/ops/a"
	b := "spiffe://demo.local/agent/ops/b"
	p := parent("triage", ["docs:read"], 900)
	two := redelegate(a, [writer], b, p, ["docs:read"], 60)
	decide(two).verdict == "allow" with data.agent.config.tasks.delegations as {a: ["spiffe://demo.local/agent/ops/*"]}
	three := redelegate(b, [a, writer], reader, p, ["docs:read"], 60)
	decide(three) == denied(["agent spiffe://demo.local/agent/ops/b may not delegate a task to spiffe://demo.local/agent/reader: the new task would carry a delegation chain of depth 3, deeper than the maximum of 2"]) with data.agent.config.tasks.delegations as {b: [reader]}
	decide(two).reasons == ["agent spiffe://demo.local/agent/ops/a may not delegate a task to spiffe://demo.local/agent/ops/b: the new task would carry a delegation chain of depth 2, deeper than the maximum of 1"] with data.agent.config.tasks.delegations as {a: ["spiffe://demo.local/agent/ops/*"]}
		with data.agent.config.tasks.max_delegation_depth as 1
}

test_depth_limit_without_a_maximum if {
	decide(delegate(writer, reader, triage, ["docs:read"], 60)).verdict == "deny" with data.agent.config.tasks.max_delegation_depth as null
	decide(open(writer, "triage", ["docs:read"], 60)).verdict == "allow" with data.agent.config.tasks.max_delegation_depth as null
}

# Opening a task with a chain that is already too deep is refused as well.
test_open_with_a_deep_chain if {
	inp := object.union(open(reader, "research", ["docs:read"], 60), {"delegation": {"chain": [ops, writer, ops], "depth": 3}})
	decide(inp).reasons == ["agent spiffe://demo.local/agent/reader may not open a task: the new task would carry a delegation chain of depth 3, deeper than the maximum of 2"]
}

test_chain_must_start_with_the_caller if {
	wrong := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"delegation": {"chain": [ops], "depth": 1}})
	decide(wrong).reasons == ["the delegation chain of the new task must start with the delegating agent spiffe://demo.local/agent/writer, not spiffe://demo.local/agent/ops/backup"]
	empty := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"delegation": {"chain": [], "depth": 0}})
	decide(empty).reasons == ["the delegation chain of the new task must start with the delegating agent spiffe://demo.local/agent/writer, not an empty chain"]
}

test_delegated_task_keeps_the_purpose if {
	inp := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"request": {"purpose": "research"}})
	decide(inp) == denied(["agent spiffe://demo.local/agent/writer may not delegate a task for purpose research out of task task-1 (purpose triage): a delegated task keeps its parent's purpose"])
}

test_delegated_scopes_stay_within_the_purpose if {
	# The purpose lost tickets:read after the parent was granted.
	d := decide(delegate(writer, reader, triage, ["tickets:read"], 60)) with data.agent.config.tasks.purposes.triage.scopes as ["docs:read"]
	d.reasons == ["agent spiffe://demo.local/agent/writer may not delegate a task to spiffe://demo.local/agent/reader for purpose triage with scope tickets:read: the purpose covers only docs:read"]

	# The purpose was removed from the policy after the parent was granted.
	retired := parent("retired", ["docs:read"], 900)
	decide(delegate(writer, reader, retired, ["docs:read"], 60)).reasons == ["agent spiffe://demo.local/agent/writer may not delegate a task to spiffe://demo.local/agent/reader for purpose retired: the policy knows no such purpose (known purposes: billing, cleanup, outreach, research, triage)"]
}

test_delegating_without_a_parent if {
	reason := "agent spiffe://demo.local/agent/writer may delegate only out of its own task, and the request carries none (parent)"
	decide(object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"parent": null})).reasons == [reason]
	bad_parent := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"parent": {"scopes": "docs:read"}})
	decide(bad_parent).reasons == [reason]
	no_expiry := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"parent": {"expires_at": null}})
	decide(no_expiry).reasons == [reason]
	no_purpose := json.remove(delegate(writer, reader, triage, ["docs:read"], 60), ["parent/purpose"])
	decide(no_purpose).reasons == [reason]
}

test_delegating_without_a_delegate if {
	inp := object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"delegate_to": null})
	decide(inp) == denied(["agent spiffe://demo.local/agent/writer asked to delegate without naming the delegate (delegate_to)"])
	decide(object.union(inp, {"delegate_to": 42})).verdict == "deny"
}

# ---------------------------------------------------------------------------
# The shape of every answer

test_default_decision_is_a_deny if {
	d := decide({}) with tasks.deny_reasons as set()
	d == denied(["the policy reached no decision for this task request, so it is denied"])
}

test_every_answer_is_well_formed if {
	inputs := [
		{},
		open(writer, "triage", ["docs:read"], 60),
		open(reader, "triage", ["tickets:write"], 60),
		open(writer, "triage", [], 0),
		delegate(writer, reader, triage, ["docs:read"], 60),
		delegate(writer, reader, triage, ["tickets:write"], 60),
		object.union(delegate(writer, reader, triage, ["docs:read"], 60), {"parent": null, "delegate_to": null}),
	]
	every inp in inputs {
		d := decide(inp)
		object.keys(d) == {"verdict", "reasons", "scopes", "ttl_seconds"}
		d.verdict in {"allow", "deny"}
		count(d.reasons) > 0
		every reason in d.reasons {
			is_string(reason)
		}
		well_formed_grant(d)
	}
}

well_formed_grant(d) if {
	d.verdict == "deny"
	d.scopes == []
	d.ttl_seconds == 0
}

well_formed_grant(d) if {
	d.verdict == "allow"
	count(d.scopes) > 0
	d.ttl_seconds > 0
	d.ttl_seconds <= data.agent.config.tasks.max_ttl_seconds
}

# Every purpose in the shipped data can be opened by some agent and only with scopes a role grants.
test_shipped_purposes_are_consistent if {
	every purpose in data.agent.config.tasks.purposes {
		count(purpose.roles) > 0
		every role in purpose.roles {
			data.agent.config.roles[role]
		}
		every scope in purpose.scopes {
			some role in purpose.roles
			scope in data.agent.config.tasks.role_scopes[role]
		}
	}
}

test_shipped_task_settings if {
	data.agent.config.tasks.require_for_writes == true
	data.agent.config.tasks.max_ttl_seconds == 1800
	data.agent.config.tasks.max_delegation_depth == 2
	data.agent.config.tasks.delegations == {
		writer: [reader, "spiffe://demo.local/agent/ops/*", assistant],
		assistant: [reader],
	}
}

# ---------------------------------------------------------------------------
# At most tasks.max_open_per_agent (50) open tasks per agent

with_open(inp, n) := object.union(inp, {"open_tasks": n})

cap_reason(id, doing, n, cap) := sprintf(
	"agent %s may not %s: it already has %v open tasks, the most the policy allows per agent (%v); complete one first",
	[id, doing, n, cap],
)

test_open_below_the_cap if {
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 49)).verdict == "allow"
}

test_open_at_the_cap_is_denied if {
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 50)) == denied([cap_reason(writer, "open a task", 50, 50)])
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 70)).reasons == [cap_reason(writer, "open a task", 70, 50)]
}

# Delegating creates a task too; the sidecar counts it against the delegator.
test_delegating_at_the_cap_is_denied if {
	inp := with_open(delegate(writer, reader, triage, ["docs:read"], 300), 50)
	decide(inp).reasons == [cap_reason(writer, sprintf("delegate a task to %s", [reader]), 50, 50)]
	decide(with_open(delegate(writer, reader, triage, ["docs:read"], 300), 49)).verdict == "allow"
}

test_cap_from_data if {
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 2)).reasons == [cap_reason(writer, "open a task", 2, 2)] with data.agent.config.tasks.max_open_per_agent as 2
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 0)).reasons == [cap_reason(writer, "open a task", 0, 0)] with data.agent.config.tasks.max_open_per_agent as 0
	decide(with_open(open(writer, "triage", ["docs:read"], 600), 5000)).verdict == "allow" with data.agent.config.tasks.max_open_per_agent as null
}

test_unreadable_cap_grants_nothing if {
	every cap in ["50", -1, 2.5, true] {
		d := decide(open(writer, "triage", ["docs:read"], 600)) with data.agent.config.tasks.max_open_per_agent as cap
		d.reasons == [sprintf("tasks.max_open_per_agent in the policy data is not a whole number >= 0 (%v), so no task is granted", [cap])]
	}
}

# The count must be there and readable whenever there is a cap to check.
test_open_tasks_missing_or_unreadable if {
	every n in [null, -1, "3", 1.5] {
		d := decide(with_open(open(writer, "triage", ["docs:read"], 600), n))
		d.reasons == [sprintf(
			"the task request does not say how many tasks agent %s has open (input.open_tasks is %s), so the policy's cap cannot be checked",
			[writer, json.marshal(n)],
		)]
	}
	missing := object.remove(open(writer, "triage", ["docs:read"], 600), {"open_tasks"})
	decide(missing).reasons == [sprintf(
		"the task request does not say how many tasks agent %s has open (input.open_tasks is null), so the policy's cap cannot be checked",
		[writer],
	)]
	decide(missing).verdict == "allow" with data.agent.config.tasks.max_open_per_agent as null
}
