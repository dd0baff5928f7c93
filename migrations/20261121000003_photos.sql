-- Receipt photos and their review.

CREATE TABLE photo_uploads (
    id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    upload_id        CHAR(26)        CHARACTER SET ascii NOT NULL,
    user_id          BIGINT UNSIGNED NOT NULL,
    -- The server-chosen object key; never the client's file name.
    storage_key      VARCHAR(255)    CHARACTER SET ascii NOT NULL,
    content_type     VARCHAR(32)     NOT NULL,
    size_bytes       INT UNSIGNED    NOT NULL,
    width            INT UNSIGNED    NOT NULL,
    height           INT UNSIGNED    NOT NULL,
    -- The receipt's amount in hundredths of a yuan, as the guest entered it.
    amount_cents     INT UNSIGNED    NOT NULL,
    estimated_points INT UNSIGNED    NOT NULL,
    review_status    ENUM('pending', 'approved', 'rejected') NOT NULL DEFAULT 'pending',
    points_awarded   INT UNSIGNED    NULL,
    review_reason    VARCHAR(255)    NULL,
    reviewer_id      BIGINT UNSIGNED NULL,
    reviewed_at      DATETIME(3)     NULL,
    created_at       DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_upload_id (upload_id),
    UNIQUE KEY uk_upload_storage_key (storage_key),
    KEY idx_uploads_user (user_id, id),
    KEY idx_uploads_status (review_status, id),
    KEY idx_uploads_reviewed (reviewed_at),
    CONSTRAINT chk_uploads_amount CHECK (amount_cents BETWEEN 1 AND 999999)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The merchant's statistics count by time.
ALTER TABLE draw_records ADD KEY idx_draws_created (created_at);
ALTER TABLE exchange_orders ADD KEY idx_exchange_created (created_at);
ALTER TABLE users ADD KEY idx_users_created (created_at);
ALTER TABLE photo_uploads ADD KEY idx_uploads_created (created_at);
