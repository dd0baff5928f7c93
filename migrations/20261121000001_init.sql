-- Foundation schema: users and their points ledger, durable user events,
-- auth sessions, idempotency keys, the prize wheel and products.
-- MySQL 8 / MariaDB 10.11 dialect; every table utf8mb4. Times are UTC
-- (the server sets the session time zone to +00:00).

CREATE TABLE users (
    user_id        BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    mobile         VARCHAR(11)     NOT NULL,
    nickname       VARCHAR(50)     NOT NULL,
    avatar         VARCHAR(255)    NULL,
    -- Always equals the sum of the user's points_records (earn − spend).
    total_points   BIGINT          NOT NULL DEFAULT 0,
    is_merchant    TINYINT(1)      NOT NULL DEFAULT 0,
    status         ENUM('active', 'inactive', 'banned') NOT NULL DEFAULT 'active',
    -- seq of the user's newest user_events row; the next event is last_seq + 1.
    last_seq       BIGINT UNSIGNED NOT NULL DEFAULT 0,
    -- Consecutive draws without a valuable prize (the pity counter).
    pity_count     INT UNSIGNED    NOT NULL DEFAULT 0,
    -- Draws made on draw_day (business-day date), for the daily limit.
    draw_day       DATE            NULL,
    draw_day_count INT UNSIGNED    NOT NULL DEFAULT 0,
    last_login_at  DATETIME(3)     NULL,
    created_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (user_id),
    UNIQUE KEY uk_users_mobile (mobile),
    KEY idx_users_merchant (is_merchant, status),
    CONSTRAINT chk_users_points_nonnegative CHECK (total_points >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The points ledger: the source of truth for every balance.
CREATE TABLE points_records (
    record_id     BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id       BIGINT UNSIGNED NOT NULL,
    type          ENUM('earn', 'spend') NOT NULL,
    points        BIGINT          NOT NULL,
    balance_after BIGINT          NOT NULL,
    source        VARCHAR(32)     NOT NULL,
    description   VARCHAR(255)    NOT NULL,
    related_id    VARCHAR(64)     NULL,
    created_at    DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (record_id),
    KEY idx_points_user (user_id, record_id),
    KEY idx_points_user_type (user_id, type, record_id),
    KEY idx_points_user_source (user_id, source, record_id),
    CONSTRAINT chk_points_positive CHECK (points > 0),
    CONSTRAINT chk_points_balance_nonnegative CHECK (balance_after >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- A user's durable events (points_update, review_result, ...), written in the
-- same transaction as the change they report. `frame` is the exact JSON text
-- frame pushed to sockets, so a replay sends the same bytes.
CREATE TABLE user_events (
    user_id    BIGINT UNSIGNED NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    type       VARCHAR(32)     NOT NULL,
    frame      TEXT            NOT NULL,
    created_at DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (user_id, seq),
    KEY idx_user_events_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row per login: the family of rotating refresh tokens. Revoking it
-- (logout, refresh-token reuse) invalidates every token of the family and
-- the access tokens that name it.
CREATE TABLE auth_sessions (
    session_id    BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    user_id       BIGINT UNSIGNED NOT NULL,
    created_at    DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    revoked_at    DATETIME(3)     NULL,
    revoke_reason VARCHAR(32)     NULL,
    PRIMARY KEY (session_id),
    KEY idx_sessions_user (user_id, revoked_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Refresh tokens are stored as SHA-256 hashes; each may be used once.
CREATE TABLE refresh_tokens (
    token_hash BINARY(32)      NOT NULL,
    session_id BIGINT UNSIGNED NOT NULL,
    user_id    BIGINT UNSIGNED NOT NULL,
    expires_at DATETIME(3)     NOT NULL,
    used_at    DATETIME(3)     NULL,
    created_at DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (token_hash),
    KEY idx_refresh_session (session_id),
    KEY idx_refresh_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The latest verification code sent to a phone, with its send-rate counters.
CREATE TABLE sms_codes (
    phone        VARCHAR(11)  NOT NULL,
    code_hash    BINARY(32)   NOT NULL,
    sent_at      DATETIME(3)  NOT NULL,
    expires_at   DATETIME(3)  NOT NULL,
    attempts     INT UNSIGNED NOT NULL DEFAULT 0,
    day          DATE         NOT NULL,
    day_count    INT UNSIGNED NOT NULL DEFAULT 0,
    PRIMARY KEY (phone)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Results of commands that must not run twice. REST `Idempotency-Key` values
-- and socket command ids share this key space per user. Written in the same
-- transaction as the command's effects, so a stored result always matches a
-- committed change.
CREATE TABLE idempotency_keys (
    user_id     BIGINT UNSIGNED NOT NULL,
    idem_key    VARCHAR(64)     NOT NULL,
    fingerprint VARCHAR(255)    NOT NULL,
    response    MEDIUMTEXT      NOT NULL,
    created_at  DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (user_id, idem_key),
    KEY idx_idem_created (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The wheel's settings: one row. `version` changes with any prize change and
-- is stored on every draw record.
CREATE TABLE lottery_settings (
    id             TINYINT UNSIGNED NOT NULL,
    version        INT UNSIGNED     NOT NULL DEFAULT 1,
    cost_points    INT UNSIGNED     NOT NULL DEFAULT 100,
    pity_threshold INT UNSIGNED     NOT NULL DEFAULT 10,
    daily_limit    INT UNSIGNED     NOT NULL DEFAULT 50,
    updated_at     DATETIME(3)      NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    CONSTRAINT chk_settings_single CHECK (id = 1)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

INSERT INTO lottery_settings (id) VALUES (1);

CREATE TABLE lottery_prizes (
    prize_id    INT UNSIGNED  NOT NULL AUTO_INCREMENT,
    prize_name  VARCHAR(100)  NOT NULL,
    prize_type  ENUM('points', 'coupon', 'physical', 'empty') NOT NULL,
    -- Points credited for a `points` prize; the face value otherwise.
    prize_value DECIMAL(10,2) NOT NULL DEFAULT 0.00,
    angle       SMALLINT UNSIGNED NOT NULL,
    color       CHAR(7)       NOT NULL DEFAULT '#FF6B6B',
    probability DECIMAL(6,4)  NOT NULL,
    is_activity TINYINT(1)    NOT NULL DEFAULT 0,
    -- Counts as a win for the pity rule.
    is_valuable TINYINT(1)    NOT NULL DEFAULT 0,
    -- NULL: no limit. Otherwise taken one by one; 0 falls back to `empty`.
    stock       INT           NULL,
    status      ENUM('active', 'inactive') NOT NULL DEFAULT 'active',
    created_at  DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at  DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (prize_id),
    KEY idx_prizes_status (status, angle),
    CONSTRAINT chk_prizes_angle CHECK (angle IN (0, 45, 90, 135, 180, 225, 270, 315)),
    CONSTRAINT chk_prizes_probability CHECK (probability >= 0 AND probability <= 1),
    CONSTRAINT chk_prizes_stock CHECK (stock IS NULL OR stock >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- One row per prize drawn. Keeps what is needed to audit the draw: the
-- config version, the pity counter before it and whether pity forced it.
CREATE TABLE draw_records (
    id             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    draw_id        CHAR(26)        CHARACTER SET ascii NOT NULL,
    user_id        BIGINT UNSIGNED NOT NULL,
    prize_id       INT UNSIGNED    NOT NULL,
    prize_name     VARCHAR(100)    NOT NULL,
    prize_type     VARCHAR(16)     NOT NULL,
    prize_value    DECIMAL(10,2)   NOT NULL,
    angle          SMALLINT UNSIGNED NOT NULL,
    points_cost    INT UNSIGNED    NOT NULL,
    is_pity        TINYINT(1)      NOT NULL,
    pity_before    INT UNSIGNED    NOT NULL,
    -- The prize the odds picked, when its stock ran out and `empty` was given.
    fallback_from  INT UNSIGNED    NULL,
    config_version INT UNSIGNED    NOT NULL,
    request_key    VARCHAR(64)     NULL,
    created_at     DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_draw_id (draw_id),
    KEY idx_draws_user (user_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE products (
    product_id      INT UNSIGNED NOT NULL AUTO_INCREMENT,
    name            VARCHAR(100) NOT NULL,
    description     VARCHAR(500) NOT NULL DEFAULT '',
    category        VARCHAR(50)  NOT NULL,
    exchange_points INT UNSIGNED NOT NULL,
    stock           INT          NOT NULL DEFAULT 0,
    image           VARCHAR(255) NULL,
    status          ENUM('active', 'inactive') NOT NULL DEFAULT 'active',
    sales_count     INT UNSIGNED NOT NULL DEFAULT 0,
    sort_order      INT          NOT NULL DEFAULT 0,
    created_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at      DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    PRIMARY KEY (product_id),
    KEY idx_products_listing (status, category, sort_order),
    CONSTRAINT chk_products_stock CHECK (stock >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
