# Session state: what the agent already did in this session (input.session),
# and the limits the policy puts on it (data.agent.config.session).
#
# input.session is null (the sidecar keeps no session for this call) or
# {key, calls, writes, calls_last_minute, labels, recent, started_at}. Its
# counters count the earlier allowed calls of the session plus the other calls
# in flight (the sidecar reserves before it asks), never the current call: so
# "at most N writes" denies a write once writes >= N. The ratchet in
# step_up.rego reads input.session.labels.
#
# Both the session key and the task are the agent's choice (a new Mcp-Session-Id
# or a new task starts afresh), so the agent's own history, keyed by its
# verified SPIFFE ID only, is limited too (input.agent_history, below).
package agent.authz

session := input.session if is_object(input.session)

session_key := sprintf("%v", [session.key])

# data.agent.config.session; absent, null or not an object: no limits.
session_settings := settings if {
	settings := cfg.session
	is_object(settings)
} else := {}

# ---------------------------------------------------------------------------
# Is the session judgeable (a request deny): the fields the policy reads.
# A session that has them all (readable_session) is not looked at field by field.

request_problems contains msg if {
	input.session != null
	not readable_session
	some msg in session_input_denies
}

# For request_denies (policy.rego): no session, or a readable one.
readable_session_input if object.get(input, "session", null) == null

readable_session_input if readable_session

# whole_number and string_list written out: this is asked on every call with a session.
readable_session if {
	s := input.session
	is_number(s.calls)
	s.calls >= 0
	s.calls == floor(s.calls)
	is_number(s.writes)
	s.writes >= 0
	s.writes == floor(s.writes)
	is_number(s.calls_last_minute)
	s.calls_last_minute >= 0
	s.calls_last_minute == floor(s.calls_last_minute)
	is_string(s.key)
	is_array(s.labels)
	every label in s.labels {
		is_string(label)
	}
}

session_input_denies contains msg if {
	not session
	msg := sprintf("input.session is neither null nor a session state object (%v)", [type_name(input.session)])
}

session_input_denies contains msg if {
	session
	some field in ["calls", "writes", "calls_last_minute"]
	not whole_number(object.get(session, field, null))
	msg := sprintf("input.session.%s is not a whole number >= 0 (%s)", [field, json.marshal(object.get(session, field, null))])
}

session_input_denies contains msg if {
	session
	not is_string(object.get(session, "key", null))
	msg := sprintf("input.session.key is not a string (%s)", [json.marshal(object.get(session, "key", null))])
}

session_input_denies contains msg if {
	session
	not string_list(object.get(session, "labels", null))
	msg := sprintf("input.session.labels is not a list of strings (%s)", [json.marshal(object.get(session, "labels", null))])
}

whole_number(n) if {
	is_number(n)
	n >= 0
	n == floor(n)
}

string_list(values) if {
	is_array(values)
	every value in values {
		is_string(value)
	}
}

# ---------------------------------------------------------------------------
# The limits (access denies). A limit that is absent (or null) from data is no
# limit; one that is not a whole number >= 0 denies what it would have limited.
# Each check compares the counter first: under the limit, it stops there.

max_writes := object.get(session_settings, "max_writes", null)

max_calls_per_minute := object.get(session_settings, "max_calls_per_minute", null)

write_denies contains msg if {
	session.writes >= max_writes
	whole_number(max_writes)
	msg := sprintf(
		"agent %s reached the limit of %v writes in this session (%s)",
		[agent_name, max_writes, session_key],
	)
}

access_denies contains msg if {
	session.calls_last_minute >= max_calls_per_minute
	whole_number(max_calls_per_minute)
	msg := sprintf(
		"agent %s made %v calls in the last minute; the limit is %v",
		[agent_name, session.calls_last_minute, max_calls_per_minute],
	)
}

write_denies contains msg if {
	session
	max_writes != null
	not whole_number(max_writes)
	msg := sprintf(
		"session.max_writes in the policy data is not a whole number >= 0 (%v), so writes in a session are denied",
		[max_writes],
	)
}

access_denies contains msg if {
	session
	max_calls_per_minute != null
	not whole_number(max_calls_per_minute)
	msg := sprintf(
		"session.max_calls_per_minute in the policy data is not a whole number >= 0 (%v), so calls in a session are denied",
		[max_calls_per_minute],
	)
}

# ---------------------------------------------------------------------------
# The agent's own history, whatever its session or task
#
# input.agent_history is null or absent (the sidecar keeps none for this call:
# no agent history limit applies) or {calls_last_minute, labels}:
# calls_last_minute counts the agent's allowed calls of the last minute in all
# its sessions and tasks plus its other calls in flight, never the current
# call; labels maps each label remembered for the agent to when it was last
# recorded (unix seconds). The ratchet in step_up.rego reads the labels too.

agent_history := input.agent_history if is_object(input.agent_history)

request_problems contains msg if {
	input.agent_history != null
	not readable_agent_history
	some msg in agent_history_input_denies
}

readable_agent_history_input if object.get(input, "agent_history", null) == null

readable_agent_history_input if readable_agent_history

# whole_number and label_times written out: this is asked on every call with a history.
readable_agent_history if {
	h := input.agent_history
	is_number(h.calls_last_minute)
	h.calls_last_minute >= 0
	h.calls_last_minute == floor(h.calls_last_minute)
	is_object(h.labels)
	every at in h.labels {
		is_number(at)
		at >= 0
		at == floor(at)
	}
}

agent_history_input_denies contains msg if {
	not agent_history
	msg := sprintf(
		"input.agent_history is neither null nor an agent history object (%v)",
		[type_name(input.agent_history)],
	)
}

agent_history_input_denies contains msg if {
	agent_history
	not whole_number(object.get(agent_history, "calls_last_minute", null))
	msg := sprintf(
		"input.agent_history.calls_last_minute is not a whole number >= 0 (%s)",
		[json.marshal(object.get(agent_history, "calls_last_minute", null))],
	)
}

agent_history_input_denies contains msg if {
	agent_history
	not label_times(object.get(agent_history, "labels", null))
	msg := sprintf(
		"input.agent_history.labels is not an object of labels to unix seconds (%s)",
		[json.marshal(object.get(agent_history, "labels", null))],
	)
}

label_times(labels) if {
	is_object(labels)
	every at in labels {
		whole_number(at)
	}
}

# A ceiling on the agent's calls a minute, across all its sessions and tasks.
max_agent_calls_per_minute := object.get(session_settings, "agent_max_calls_per_minute", null)

access_denies contains msg if {
	agent_history.calls_last_minute >= max_agent_calls_per_minute
	whole_number(max_agent_calls_per_minute)
	msg := sprintf(
		"agent %s made %v calls in the last minute across all its sessions and tasks; the limit per agent is %v",
		[agent_name, agent_history.calls_last_minute, max_agent_calls_per_minute],
	)
}

access_denies contains msg if {
	agent_history
	max_agent_calls_per_minute != null
	not whole_number(max_agent_calls_per_minute)
	msg := sprintf(
		"session.agent_max_calls_per_minute in the policy data is not a whole number >= 0 (%v), so every call of an agent is denied",
		[max_agent_calls_per_minute],
	)
}

# The labels recorded for the agent within session.agent_label_window_seconds.
# Absent, null or not a whole number >= 0: every label the sidecar still
# remembers counts (sessions.agent_label_retention_seconds), the stricter reading.
label_window := object.get(session_settings, "agent_label_window_seconds", null)

# When a label was recorded at unix second `at`: within the window (or no usable window).
in_label_window(_) if not whole_number(label_window)

in_label_window(at) if {
	now_seconds - at <= label_window
	whole_number(label_window)
}
