package gatehouse.cms.access_test

import data.gatehouse.cms.access

admin := {"sub": "ada", "role": "platform_admin", "project": null}

team_a_user := {"sub": "tom", "role": "project_user", "project": "team-a"}

platform_project_user := {"sub": "pat", "role": "project_user", "project": "platform"}

decision(method, path, user) := d if {
	d := access with input as {"method": method, "path": path, "user": user}
}

anonymous(method, path) := d if {
	d := access with input as {"method": method, "path": path}
}

test_admin_may_do_everything_under_policies if {
	every request in [
		["GET", ["policies"]],
		["GET", ["policies", "platform"]],
		["PUT", ["policies", "platform"]],
		["GET", ["policies", "team-b"]],
		["PUT", ["policies", "team-b"]],
		["DELETE", ["policies", "team-b"]],
		["GET", ["policies", "team-b", "history"]],
		["GET", ["policies", "team-b", "history", "3"]],
	] {
		decision(request[0], request[1], admin).allow
	}
	not decision("GET", ["policies", "team-b"], admin).status_code
}

test_admin_is_not_granted_outside_policies if {
	not decision("GET", ["admin"], admin).allow
}

test_project_user_reads_own_project if {
	decision("GET", ["policies", "team-a"], team_a_user).allow
	decision("HEAD", ["policies", "team-a"], team_a_user).allow
	decision("GET", ["policies", "team-a", "history"], team_a_user).allow
	decision("GET", ["policies", "team-a", "history", "1"], team_a_user).allow
}

test_project_user_may_list if {
	decision("GET", ["policies"], team_a_user).allow
}

test_project_user_may_not_write if {
	every method in ["PUT", "DELETE", "POST", "PATCH"] {
		d := decision(method, ["policies", "team-a"], team_a_user)
		not d.allow
		d.status_code == 403
		d.reason == "only platform admins may manage policies"
	}
}

test_project_user_may_not_read_other_projects if {
	d := decision("GET", ["policies", "team-b"], team_a_user)
	not d.allow
	d.status_code == 403
	not decision("GET", ["policies", "team-b", "history"], team_a_user).allow
}

test_project_user_never_reads_platform if {
	d := decision("GET", ["policies", "platform"], platform_project_user)
	not d.allow
	d.reason == "the platform policy is for platform admins only"
	not decision("GET", ["policies", "platform"], team_a_user).allow
}

test_no_user_is_401 if {
	d := anonymous("GET", ["policies", "team-a"])
	not d.allow
	d.status_code == 401
	d.reason == "a verified identity is required"
}

test_any_role_with_a_project_is_a_project_user if {
	viewer := {"sub": "vic", "role": "viewer", "project": "team-a"}
	decision("GET", ["policies", "team-a"], viewer).allow
	not decision("GET", ["policies", "team-b"], viewer).allow
	not decision("PUT", ["policies", "team-a"], viewer).allow
	no_role := {"sub": "nor", "role": null, "project": "team-a"}
	decision("GET", ["policies", "team-a", "history"], no_role).allow
}

test_no_project_and_not_admin_refused if {
	d := decision("GET", ["policies"], {"sub": "x", "role": null, "project": null})
	not d.allow
	d.status_code == 403
	not decision("GET", ["policies", "team-a"], {"sub": "x", "role": "viewer", "project": null}).allow
}

test_project_user_without_project_refused if {
	not decision("GET", ["policies"], {"sub": "x", "role": "project_user", "project": null}).allow
	not decision("GET", ["policies", ""], {"sub": "x", "role": "project_user", "project": ""}).allow
}

test_status_follows_read if {
	decision("GET", ["policies", "team-b", "status"], admin).allow
	decision("GET", ["policies", "team-a", "status"], team_a_user).allow
	not decision("GET", ["policies", "team-b", "status"], team_a_user).allow
	not decision("GET", ["policies", "platform", "status"], platform_project_user).allow
	not decision("PUT", ["policies", "team-a", "status"], team_a_user).allow
	anonymous("GET", ["policies", "team-a", "status"]).status_code == 401
}

test_gateways_for_platform_admins_only if {
	decision("GET", ["gateways"], admin).allow
	d := decision("GET", ["gateways"], team_a_user)
	not d.allow
	d.status_code == 403
	anonymous("GET", ["gateways"]).status_code == 401
}

test_admin_manages_budgets_and_reads_usage if {
	every request in [
		["GET", ["budgets"]],
		["GET", ["budgets", "team-b"]],
		["HEAD", ["budgets", "team-b"]],
		["PUT", ["budgets", "team-b"]],
		["DELETE", ["budgets", "team-b"]],
		["GET", ["budgets", "team-b", "history"]],
		["GET", ["budgets", "team-b", "history", "2"]],
		["GET", ["usage", "team-b"]],
	] {
		d := decision(request[0], request[1], admin)
		d.allow
		d.reason == "platform admins may manage every budget and read all usage"
		not d.status_code
	}
}

test_project_user_reads_own_budget_history_and_usage if {
	every request in [
		["GET", ["budgets", "team-a"]],
		["HEAD", ["budgets", "team-a"]],
		["GET", ["budgets", "team-a", "history"]],
		["GET", ["budgets", "team-a", "history", "1"]],
		["GET", ["usage", "team-a"]],
		["HEAD", ["usage", "team-a"]],
	] {
		d := decision(request[0], request[1], team_a_user)
		d.allow
		d.reason == "project users may read their own project's budget and usage"
	}
}

test_project_user_never_writes_budgets if {
	every method in ["PUT", "DELETE", "POST", "PATCH"] {
		d := decision(method, ["budgets", "team-a"], team_a_user)
		not d.allow
		d.status_code == 403
		d.reason == "only platform admins may manage budgets or list them"
	}
}

test_project_user_may_not_list_budgets if {
	d := decision("GET", ["budgets"], team_a_user)
	not d.allow
	d.status_code == 403
	d.reason == "only platform admins may manage budgets or list them"
}

test_project_user_may_not_read_other_projects_budget_or_usage if {
	every path in [
		["budgets", "team-b"],
		["budgets", "team-b", "history"],
		["budgets", "team-b", "history", "1"],
		["usage", "team-b"],
	] {
		d := decision("GET", path, team_a_user)
		not d.allow
		d.status_code == 403
		d.reason == "project users may only read their own project's budget and usage"
	}
}

test_usage_is_read_only_for_project_users if {
	every method in ["PUT", "DELETE", "POST"] {
		d := decision(method, ["usage", "team-a"], team_a_user)
		not d.allow
		d.reason == "project users may only read their own project's usage"
	}
	not decision("GET", ["usage", "team-a", "extra"], team_a_user).allow
	not decision("GET", ["usage"], team_a_user).allow
}

test_platform_claim_is_no_project_for_budgets if {
	not decision("GET", ["budgets", "platform"], platform_project_user).allow
	not decision("GET", ["usage", "platform"], platform_project_user).allow
	not decision("GET", ["budgets", "platform", "history"], platform_project_user).allow
}

test_budgets_and_usage_need_an_identity if {
	every request in [
		["GET", ["budgets"]],
		["GET", ["budgets", "team-a"]],
		["PUT", ["budgets", "team-a"]],
		["GET", ["usage", "team-a"]],
	] {
		d := anonymous(request[0], request[1])
		not d.allow
		d.status_code == 401
	}
}

test_budgets_need_a_project_or_the_admin_role if {
	nobody := {"sub": "x", "role": "viewer", "project": null}
	d := decision("GET", ["budgets", "team-a"], nobody)
	not d.allow
	d.status_code == 403
	not decision("GET", ["usage", "team-a"], nobody).allow
}

test_policy_reasons_unchanged_by_budgets if {
	decision("GET", ["policies", "team-b"], admin).reason == "platform admins may manage every policy"
	decision("GET", ["policies", "team-a"], team_a_user).reason == "project users may list policies and read their own project's policy"
	decision("GET", ["policies", "team-b"], team_a_user).reason == "project users may only read their own project's policy"
	decision("GET", ["gateways"], admin).reason == "platform admins may manage every policy"
}

test_candidates_are_written_by_admins_and_read_by_the_project if {
	decision("PUT", ["policies", "team-b", "candidate"], admin).allow
	decision("POST", ["policies", "team-b", "candidate", "promote"], admin).allow
	decision("DELETE", ["policies", "team-b", "candidate"], admin).allow
	decision("GET", ["policies", "team-a", "candidate"], team_a_user).allow
	not decision("GET", ["policies", "team-b", "candidate"], team_a_user).allow
	not decision("GET", ["policies", "platform", "candidate"], platform_project_user).allow
	not decision("PUT", ["policies", "team-a", "candidate"], team_a_user).allow
	not decision("POST", ["policies", "team-a", "candidate", "promote"], team_a_user).allow
	not decision("DELETE", ["policies", "team-a", "candidate"], team_a_user).allow
	anonymous("GET", ["policies", "team-a", "candidate"]).status_code == 401
}

test_evaluate_live_follows_read_a_draft_is_for_admins if {
	decision("POST", ["policies", "team-b", "evaluate"], admin).allow
	decision("POST", ["policies", "platform", "evaluate"], admin).allow
	decision("POST", ["policies", "team-b", "evaluate", "draft"], admin).allow
	decision("POST", ["policies", "team-a", "evaluate"], team_a_user).allow
	not decision("GET", ["policies", "team-a", "evaluate"], team_a_user).allow
	not decision("POST", ["policies", "team-b", "evaluate"], team_a_user).allow
	not decision("POST", ["policies", "platform", "evaluate"], platform_project_user).allow
	draft := decision("POST", ["policies", "team-a", "evaluate", "draft"], team_a_user)
	not draft.allow
	draft.status_code == 403
	draft.reason == "only platform admins may evaluate a draft; project users may evaluate their own project's live policy"
	anonymous("POST", ["policies", "team-a", "evaluate"]).status_code == 401
}

test_project_users_read_their_own_budget_remaining if {
	decision("GET", ["budgets", "team-b", "remaining"], admin).allow
	decision("GET", ["budgets", "team-a", "remaining"], team_a_user).allow
	not decision("GET", ["budgets", "team-b", "remaining"], team_a_user).allow
	not decision("PUT", ["budgets", "team-a", "remaining"], team_a_user).allow
	anonymous("GET", ["budgets", "team-a", "remaining"]).status_code == 401
}
