-- The auth service's own migration, run as the owner role (arq_owner) by `auth migrate` after
-- arq-auth's migrations created the issuer's tables. The service connects as arq_app, which
-- must own nothing: it gets exactly the statements the issuer runs.
--
-- These are credential tables read before any tenant is known (a login looks the user up by
-- name), so they are not under row-level security; their tenant column is `bound_tenant_id`
-- (see docs/auth.md, "Storage", in the arq repository).
GRANT SELECT, INSERT, UPDATE ON arq_auth_users, arq_auth_clients TO arq_app;
GRANT SELECT, INSERT, UPDATE ON arq_auth_refresh_tokens TO arq_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON arq_auth_totp, arq_auth_recovery_codes,
    arq_auth_otp_codes, arq_auth_otp_destinations, arq_auth_role_assignments TO arq_app;
GRANT SELECT ON arq_auth_api_keys TO arq_app;
