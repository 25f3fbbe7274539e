"""The reference's rules for users: password policy and the field validators of user create,
update and current-user update."""
