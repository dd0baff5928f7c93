-- Merchant accountability and guest quotas.

-- Every merchant action, written in the same transaction as the action.
-- `before_value`/`after_value` are JSON text of what changed; `points` is
-- the number of points the action moved (approvals, adjustments), so a
-- merchant's daily adjustment budget is one indexed sum.
CREATE TABLE merchant_audit_log (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    actor_id     BIGINT UNSIGNED NOT NULL,
    action       VARCHAR(32)     NOT NULL,
    target       VARCHAR(64)     NOT NULL,
    before_value TEXT            NULL,
    after_value  TEXT            NULL,
    reason       VARCHAR(255)    NULL,
    points       BIGINT          NULL,
    created_at   DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    KEY idx_audit_actor (actor_id, action, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- A guest's uploads today (count and bytes) and pending ones, read under
-- the guest's row lock before each upload.
ALTER TABLE photo_uploads ADD KEY idx_uploads_user_created (user_id, created_at);
ALTER TABLE photo_uploads ADD KEY idx_uploads_user_status (user_id, review_status);
