# The OpenID AuthZEN interop "Todo" scenario as an AuthZEN entrypoint for authz-sidecar:
# ./taskw up BUNDLE=examples/authzen-todo serves it at the sidecar's AuthZEN base URL.
#
# Users (data.todo.users, keyed by the subject ids the interop suite sends) have roles:
# everyone may read users and the todo list; admins and editors may create todos; an
# evil_genius may update or delete any todo, an editor only the todos it owns
# (resource.properties.ownerID is the owner's email).
package authzen

users := data.todo.users

# The interop suite compares decisions only, so the answer is a plain boolean.

# METADATA
# description: The AuthZEN entrypoint (authzen.decision_path, default authzen/decision).
# entrypoint: true
default decision := false

decision if allowed

# METADATA
# description: Candidate actions for the Action Search API; the sidecar evaluates each.
# entrypoint: true
actions := [{"name": name} | some name in ["can_read_user", "can_read_todos", "can_create_todo", "can_update_todo", "can_delete_todo"]]

user := users[input.subject.id]

allowed if {
	input.action.name in {"can_read_user", "can_read_todos"}
	user
}

allowed if {
	input.action.name == "can_create_todo"
	some role in user.roles
	role in {"admin", "editor"}
}

allowed if {
	input.action.name in {"can_update_todo", "can_delete_todo"}
	"evil_genius" in user.roles
}

allowed if {
	input.action.name in {"can_update_todo", "can_delete_todo"}
	"editor" in user.roles
	input.resource.properties.ownerID == user.email
}
