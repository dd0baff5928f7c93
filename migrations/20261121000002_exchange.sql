-- Points exchange: orders with a counter code, and the audit of every stock
-- change. `products` itself is in the initial migration.

-- Increases with every stock change, in the same statement, so stock
-- broadcasts can be ordered: a socket never sees an older stock after a newer.
ALTER TABLE products
    ADD COLUMN stock_version BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER stock;

CREATE TABLE exchange_orders (
    id              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    exchange_id     CHAR(26)        CHARACTER SET ascii NOT NULL,
    -- What the guest shows at the counter: 8 characters without look-alikes.
    exchange_code   CHAR(8)         CHARACTER SET ascii NOT NULL,
    user_id         BIGINT UNSIGNED NOT NULL,
    product_id      INT UNSIGNED    NOT NULL,
    product_name    VARCHAR(100)    NOT NULL,
    quantity        INT UNSIGNED    NOT NULL,
    unit_points     INT UNSIGNED    NOT NULL,
    total_cost      BIGINT          NOT NULL,
    status          ENUM('pending', 'redeemed') NOT NULL DEFAULT 'pending',
    redeemed_at     DATETIME(3)     NULL,
    redeemed_by     BIGINT UNSIGNED NULL,
    request_key     VARCHAR(64)     NULL,
    created_at      DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY uk_exchange_id (exchange_id),
    UNIQUE KEY uk_exchange_code (exchange_code),
    KEY idx_exchange_user (user_id, id),
    CONSTRAINT chk_exchange_quantity CHECK (quantity > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Every change of a product's stock: who, by how much, why.
CREATE TABLE stock_changes (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    product_id  INT UNSIGNED    NOT NULL,
    operation   ENUM('create', 'purchase', 'restock', 'admin_adjust') NOT NULL,
    delta       INT             NOT NULL,
    stock_after INT             NOT NULL,
    actor_id    BIGINT UNSIGNED NULL,
    reason      VARCHAR(255)    NOT NULL,
    related_id  VARCHAR(64)     NULL,
    created_at  DATETIME(3)     NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    KEY idx_stock_changes_product (product_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
