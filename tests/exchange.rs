//! Points exchange through both doors: the catalogue guests see, purchases
//! over REST and over the socket (and a hundred guests racing for ten
//! items), idempotency keys, the refusals, the guest's orders, redemption
//! at the counter, and the merchant's product and stock tools with their
//! audit and their `stock_update` broadcasts.
//!
//! Every test creates its own products, in a category of its own, so that
//! tests running in parallel against one database never see each other's.

mod common;

use common::{Answer, TestServer, User, WsClient, answer, count, post_json};
use futures::future::join_all;
use protocol::ServerFrame;
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Barrier;

/// The demo merchant (`src/seed.rs`).
const MERCHANT_PHONE: &str = "13900000000";
/// A new user's register bonus.
const START_POINTS: i64 = 1000;
/// The characters of a counter code: no 0/O, 1/I/L.
const CODE_ALPHABET: &str = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";

// Codes the contract and `protocol/` fix.
const INVALID_PARAMETER: i64 = 2000;
const MERCHANT_REQUIRED: i64 = 2003;
const IDEMPOTENCY_CONFLICT: i64 = 2005;
const TOKEN_MISSING: i64 = 4001;
const NOT_ENOUGH_STOCK: i64 = 4004;
const NOT_ENOUGH_POINTS: i64 = 4005;
const PRODUCT_UNAVAILABLE: i64 = 4006;
const CODE_NOT_FOUND: i64 = 4007;
const ALREADY_REDEEMED: i64 = 4008;

/// The fields of a product in every list (contract §2, Exchange).
const PRODUCT_FIELDS: [&str; 9] = [
    "product_id",
    "name",
    "description",
    "category",
    "exchange_points",
    "stock",
    "image",
    "status",
    "sales_count",
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A REST answer: status, raw text and parsed envelope.
/// Any REST call, with or without a token and a JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = server.http.request(method, server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    answer(req).await
}

async fn get(server: &TestServer, path: &str, user: &User) -> Answer {
    call(server, Method::GET, path, Some(&user.access_token), None).await
}

async fn post(server: &TestServer, path: &str, user: &User, body: Value) -> Answer {
    call(
        server,
        Method::POST,
        path,
        Some(&user.access_token),
        Some(body),
    )
    .await
}

async fn put(server: &TestServer, path: &str, user: &User, body: Value) -> Answer {
    call(
        server,
        Method::PUT,
        path,
        Some(&user.access_token),
        Some(body),
    )
    .await
}

async fn submit_rest(server: &TestServer, user: &User, body: Value, key: Option<&str>) -> Answer {
    post_json(
        &server.http,
        &server.url("/api/exchange/submit"),
        &user.access_token,
        body,
        key,
    )
    .await
}

/// A REST purchase that must succeed; returns its `data`.
async fn buy(server: &TestServer, user: &User, product_id: u64, quantity: u64) -> Value {
    submit_rest(
        server,
        user,
        json!({ "product_id": product_id, "quantity": quantity }),
        None,
    )
    .await
    .ok()
    .clone()
}

async fn submit_ws(ws: &mut WsClient, id: &str, body: Value) -> ServerFrame {
    let reply = ws.command(id, "exchange.submit", body).await;
    assert_eq!(reply.kind, "reply");
    assert_eq!(reply.id.as_deref(), Some(id));
    reply
}

/// A category no other test uses.
fn fresh_category(label: &str) -> String {
    format!("{label}-{:08x}", rand::rng().random::<u32>())
}

async fn merchant(server: &TestServer) -> User {
    server.login(MERCHANT_PHONE).await
}

/// Creates a product through the merchant API; returns the product.
async fn create_product(server: &TestServer, merchant: &User, body: Value) -> Value {
    post(server, "/api/merchant/products", merchant, body)
        .await
        .ok()
        .clone()
}

/// An active product with this price and opening stock; returns its id.
async fn new_product(
    server: &TestServer,
    merchant: &User,
    category: &str,
    price: i64,
    stock: i64,
) -> u64 {
    let p = create_product(
        server,
        merchant,
        json!({
            "name": format!("{category} 商品"),
            "description": "测试商品",
            "category": category,
            "exchange_points": price,
            "stock": stock,
        }),
    )
    .await;
    p["product_id"]
        .as_u64()
        .expect("a created product has an id")
}

/// `(stock, sales_count)` of a product, straight from the database.
async fn stock_of(server: &TestServer, product_id: u64) -> (i64, i64) {
    sqlx::query_as(
        "SELECT CAST(stock AS SIGNED), CAST(sales_count AS SIGNED) FROM products WHERE product_id = ?",
    )
    .bind(product_id)
    .fetch_one(&server.db)
    .await
    .unwrap()
}

/// The user's `exchange` ledger rows.
async fn exchange_spends(server: &TestServer, user_id: u64) -> i64 {
    count(
        server,
        "SELECT COUNT(*) FROM points_records WHERE user_id = ? AND source = 'exchange'",
        user_id,
    )
    .await
}

async fn order_rows(server: &TestServer, user_id: u64) -> i64 {
    count(
        server,
        "SELECT COUNT(*) FROM exchange_orders WHERE user_id = ?",
        user_id,
    )
    .await
}

/// Everything a refused purchase must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    points: i64,
    last_seq: u64,
    orders: i64,
    spends: i64,
    stocks: Vec<(i64, i64)>,
}

async fn snapshot(server: &TestServer, user: &User, products: &[u64]) -> Snapshot {
    let audit = server.audit(user.user_id).await;
    let mut stocks = Vec::new();
    for &p in products {
        stocks.push(stock_of(server, p).await);
    }
    Snapshot {
        points: audit.total_points,
        last_seq: audit.last_seq,
        orders: order_rows(server, user.user_id).await,
        spends: exchange_spends(server, user.user_id).await,
        stocks,
    }
}

/// The guest catalogue of one category (`data`).
async fn guest_list(server: &TestServer, guest: &User, query: &str) -> Value {
    get(server, &format!("/api/exchange/products?{query}"), guest)
        .await
        .ok()
        .clone()
}

/// The merchant catalogue (`data`), inactive products included.
async fn merchant_list(server: &TestServer, merchant: &User, query: &str) -> Value {
    get(server, &format!("/api/merchant/products?{query}"), merchant)
        .await
        .ok()
        .clone()
}

fn products_of(list: &Value) -> &Vec<Value> {
    list["products"]
        .as_array()
        .unwrap_or_else(|| panic!("a product list has products: {list}"))
}

fn ids_of(list: &Value) -> Vec<u64> {
    products_of(list)
        .iter()
        .map(|p| p["product_id"].as_u64().unwrap())
        .collect()
}

fn find_product(list: &Value, product_id: u64) -> &Value {
    products_of(list)
        .iter()
        .find(|p| p["product_id"].as_u64() == Some(product_id))
        .unwrap_or_else(|| panic!("product {product_id} is listed: {list}"))
}

fn assert_code_shape(code: &str) {
    assert_eq!(code.len(), 8, "a counter code has 8 characters: {code:?}");
    assert!(
        code.chars().all(|c| CODE_ALPHABET.contains(c)),
        "a counter code uses only {CODE_ALPHABET}: {code:?}"
    );
}

/// The reply to a no-op command: every event queued for the socket before
/// it was sent has been written by the time it arrives.
async fn settle(ws: &mut WsClient, id: &str) {
    let pong = ws.command(id, "ping", json!({})).await;
    assert_eq!(pong.code, Some(0), "{pong:?}");
}

/// Reads `stock_update`s until one reports `product_id` at `stock`; returns
/// every stock value seen for that product, in arrival order.
async fn stock_updates_until(ws: &mut WsClient, product_id: u64, stock: i64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let f = ws.next_of("stock_update").await;
        if f.data["product_id"].as_u64() != Some(product_id) {
            continue;
        }
        assert!(f.seq.is_none(), "stock_update is not a user event: {f:?}");
        let done = f.data["stock"].as_i64() == Some(stock);
        seen.push(f.data);
        if done {
            return seen;
        }
    }
}

async fn redeem(server: &TestServer, merchant: &User, code: &str) -> Answer {
    post(
        server,
        "/api/merchant/exchange/redeem",
        merchant,
        json!({ "exchange_code": code }),
    )
    .await
}

async fn orders_of(server: &TestServer, user: &User) -> Value {
    get(server, "/api/exchange/orders?page=1&page_size=100", user)
        .await
        .ok()
        .clone()
}

async fn stock_changes(server: &TestServer, merchant: &User, product_id: u64) -> Value {
    get(
        server,
        &format!("/api/merchant/products/{product_id}/stock-changes?page_size=100"),
        merchant,
    )
    .await
    .ok()
    .clone()
}

async fn change_stock(
    server: &TestServer,
    merchant: &User,
    product_id: u64,
    body: Value,
) -> Answer {
    post(
        server,
        &format!("/api/merchant/products/{product_id}/stock"),
        merchant,
        body,
    )
    .await
}

// ---------------------------------------------------------------------------
// The catalogue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn guests_see_only_active_products_and_sold_out_ones_stay_listed_with_stock_zero() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let guest = server.login_new().await;
    let buyer = server.login_new().await;
    let category = fresh_category("list");
    let other_category = fresh_category("other");

    let on_sale = new_product(&server, &merchant, &category, 100, 5).await;
    let hidden = create_product(
        &server,
        &merchant,
        json!({
            "name": "下架商品",
            "category": category,
            "exchange_points": 100,
            "stock": 5,
            "status": "inactive",
        }),
    )
    .await;
    assert_eq!(hidden["status"], "inactive");
    let hidden = hidden["product_id"].as_u64().unwrap();
    let sold_out = new_product(&server, &merchant, &category, 100, 1).await;
    buy(&server, &buyer, sold_out, 1).await;
    let elsewhere = new_product(&server, &merchant, &other_category, 100, 5).await;

    // The guest's list of the category: the active ones, by sort then id.
    let list = guest_list(&server, &guest, &format!("category={category}")).await;
    assert_eq!(ids_of(&list), vec![on_sale, sold_out], "{list}");
    for p in products_of(&list) {
        let fields = p.as_object().unwrap();
        for field in PRODUCT_FIELDS {
            assert!(fields.contains_key(field), "{field} of {p}");
        }
        assert_eq!(p["category"], category.as_str());
        assert_eq!(p["status"], "active");
        assert_eq!(p["exchange_points"], 100);
    }
    let gone = find_product(&list, sold_out);
    assert_eq!(gone["stock"], 0, "a sold-out product stays listed: {gone}");
    assert_eq!(gone["sales_count"], 1);
    let fresh = find_product(&list, on_sale);
    assert_eq!(
        (fresh["stock"].as_i64(), fresh["sales_count"].as_i64()),
        (Some(5), Some(0))
    );
    assert_eq!(fresh["description"], "测试商品");
    assert_eq!(
        list["pagination"],
        json!({ "total": 2, "page": 1, "limit": 20, "total_pages": 1 })
    );

    // The merchant sees the inactive one too.
    let all = merchant_list(&server, &merchant, &format!("category={category}")).await;
    assert_eq!(ids_of(&all), vec![on_sale, hidden, sold_out], "{all}");
    assert_eq!(find_product(&all, hidden)["status"], "inactive");
    assert_eq!(all["pagination"]["total"], 3);

    // The category filter.
    let other = guest_list(&server, &guest, &format!("category={other_category}")).await;
    assert_eq!(ids_of(&other), vec![elsewhere]);

    // Pages of one.
    let first = guest_list(
        &server,
        &guest,
        &format!("category={category}&page=1&page_size=1"),
    )
    .await;
    assert_eq!(ids_of(&first), vec![on_sale]);
    assert_eq!(
        first["pagination"],
        json!({ "total": 2, "page": 1, "limit": 1, "total_pages": 2 })
    );
    let second = guest_list(
        &server,
        &guest,
        &format!("category={category}&page=2&page_size=1"),
    )
    .await;
    assert_eq!(ids_of(&second), vec![sold_out]);
    let past = guest_list(
        &server,
        &guest,
        &format!("category={category}&page=3&page_size=1"),
    )
    .await;
    assert_eq!(
        ids_of(&past),
        Vec::<u64>::new(),
        "a page past the end is empty"
    );
    assert_eq!(past["pagination"]["total"], 2);

    // No category: the whole guest catalogue, page by page, holds no
    // inactive product.
    let mut page = 1;
    loop {
        let list = guest_list(&server, &guest, &format!("page={page}&page_size=100")).await;
        let products = products_of(&list);
        assert!(products.iter().all(|p| p["status"] == "active"), "{list}");
        assert!(!ids_of(&list).contains(&hidden), "{list}");
        if products.len() < 100 {
            break;
        }
        page += 1;
    }
}

#[tokio::test]
async fn the_catalogue_on_the_socket_is_the_catalogue_over_rest() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let guest = server.login_new().await;
    let category = fresh_category("wslist");
    for (price, stock) in [(100, 5), (200, 0), (300, 7)] {
        new_product(&server, &merchant, &category, price, stock).await;
    }
    create_product(
        &server,
        &merchant,
        json!({ "name": "隐藏", "category": category, "exchange_points": 10, "stock": 1, "status": "inactive" }),
    )
    .await;
    let mut ws = server.connect(&guest).await;

    let rest = guest_list(&server, &guest, &format!("category={category}")).await;
    assert_eq!(products_of(&rest).len(), 3);
    let reply = ws
        .command(
            "products-1",
            "exchange.products",
            json!({ "category": category }),
        )
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data, rest, "the socket lists what REST lists");

    let rest = guest_list(
        &server,
        &guest,
        &format!("category={category}&page=2&page_size=2"),
    )
    .await;
    let reply = ws
        .command(
            "products-2",
            "exchange.products",
            json!({ "category": category, "page": 2, "page_size": 2 }),
        )
        .await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data, rest);
    assert_eq!(products_of(&reply.data).len(), 1);
}

// ---------------------------------------------------------------------------
// Purchases racing
// ---------------------------------------------------------------------------

/// One racer's answer, from whichever door it used.
#[derive(Debug)]
struct Outcome {
    /// The HTTP status (REST door) or `None` (socket door).
    status: Option<u16>,
    code: i64,
    data: Value,
}

struct Guest {
    user: User,
    ws: WsClient,
}

#[tokio::test]
async fn a_hundred_guests_racing_for_ten_items_over_both_doors_buy_exactly_ten() {
    const GUESTS: usize = 100;
    const STOCK: i64 = 10;
    const PRICE: i64 = 100;
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("race");
    let product_id = new_product(&server, &merchant, &category, PRICE, STOCK).await;

    let users = join_all((0..GUESTS).map(|_| server.login_new())).await;
    let sockets = join_all(users.iter().map(|u| server.connect(u))).await;

    let barrier = Arc::new(Barrier::new(GUESTS));
    let url = server.url("/api/exchange/submit");
    let mut tasks = Vec::new();
    for (i, (user, ws)) in users.into_iter().zip(sockets).enumerate() {
        let (http, url, barrier) = (server.http.clone(), url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut guest = Guest { user, ws };
            let body = json!({ "product_id": product_id, "quantity": 1 });
            let key = format!("race-{i}");
            barrier.wait().await;
            let outcome = if i % 2 == 0 {
                let a = post_json(&http, &url, &guest.user.access_token, body, Some(&key)).await;
                Outcome {
                    status: Some(a.status),
                    code: a.code(),
                    data: a.data().clone(),
                }
            } else {
                let r = submit_ws(&mut guest.ws, &key, body).await;
                Outcome {
                    status: None,
                    code: i64::from(r.code.expect("a reply has a code")),
                    data: r.data,
                }
            };
            (guest, outcome)
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }

    // Exactly ten win; every other racer is told the stock is gone.
    let mut codes = HashSet::new();
    let mut remaining_stock = Vec::new();
    for (guest, o) in &runs {
        match o.code {
            0 => {
                assert!(matches!(o.status, None | Some(200)), "{o:?}");
                let d = &o.data;
                assert_eq!(d["product_id"].as_u64(), Some(product_id), "{d}");
                assert_eq!(d["quantity"], 1);
                assert_eq!(d["total_cost"].as_i64(), Some(PRICE));
                assert_eq!(d["remaining_points"].as_i64(), Some(START_POINTS - PRICE));
                assert!(!d["exchange_id"].as_str().unwrap().is_empty());
                let code = d["exchange_code"].as_str().expect("a winner gets a code");
                assert_code_shape(code);
                assert!(codes.insert(code.to_string()), "codes are unique: {code}");
                remaining_stock.push(d["remaining_stock"].as_i64().unwrap());
            }
            NOT_ENOUGH_STOCK => {
                assert!(matches!(o.status, None | Some(422)), "{o:?}");
                assert_eq!(o.data, json!({ "available_stock": 0 }), "{o:?}");
            }
            _ => panic!(
                "guest {}: a racer wins or is told 4004: {o:?}",
                guest.user.user_id
            ),
        }
    }
    assert_eq!(codes.len(), STOCK as usize, "exactly ten purchases succeed");
    remaining_stock.sort_unstable();
    assert_eq!(
        remaining_stock,
        (0..STOCK).collect::<Vec<i64>>(),
        "each winner took one of the ten, leaving 9, 8, ..., 0"
    );

    // The product: sold out, ten sold.
    assert_eq!(stock_of(&server, product_id).await, (0, STOCK));
    let listed = merchant_list(&server, &merchant, &format!("category={category}")).await;
    let p = find_product(&listed, product_id);
    assert_eq!(
        (p["stock"].as_i64(), p["sales_count"].as_i64()),
        (Some(0), Some(STOCK))
    );
    assert_eq!(
        count(
            &server,
            "SELECT COUNT(*) FROM stock_changes WHERE product_id = ? AND operation = 'purchase'",
            product_id,
        )
        .await,
        STOCK
    );

    // Each guest's points: a winner paid once, a loser nothing.
    for (guest, o) in &runs {
        let audit = server.audit(guest.user.user_id).await;
        audit.assert_consistent();
        let spends = exchange_spends(&server, guest.user.user_id).await;
        if o.code == 0 {
            assert_eq!((audit.total_points, spends), (START_POINTS - PRICE, 1));
        } else {
            assert_eq!((audit.total_points, spends), (START_POINTS, 0));
            assert_eq!(order_rows(&server, guest.user.user_id).await, 0);
        }
    }

    // Every socket hears the product sell out, and never sees its stock go
    // back up; a winner hears its own points go down by the price.
    for (i, (guest, o)) in runs.iter_mut().enumerate() {
        let updates = stock_updates_until(&mut guest.ws, product_id, 0).await;
        let stocks: Vec<i64> = updates
            .iter()
            .map(|u| u["stock"].as_i64().unwrap())
            .collect();
        assert!(
            stocks.windows(2).all(|w| w[0] >= w[1]),
            "socket {i}: stock never goes back up: {stocks:?}"
        );
        for u in &updates {
            assert_eq!(u["operation"], "purchase", "{u}");
            assert_eq!(u["product_name"], format!("{category} 商品"));
            assert!(u["timestamp"].is_string());
        }
        if o.code == 0 {
            let update = guest.ws.next_of("points_update").await;
            assert_eq!(update.data["user_id"].as_u64(), Some(guest.user.user_id));
            assert_eq!(update.data["change_points"].as_i64(), Some(-PRICE));
            assert_eq!(
                update.data["total_points"].as_i64(),
                Some(START_POINTS - PRICE)
            );
            assert_eq!(update.data["source"], "exchange");
        } else {
            settle(&mut guest.ws, "settle-loser").await;
            assert!(
                guest.ws.pending.iter().all(|f| f.kind != "points_update"),
                "a loser's points never moved: {:?}",
                guest.ws.pending
            );
        }
    }
}

#[tokio::test]
async fn a_guest_racing_ten_purchases_they_can_afford_three_of_buys_exactly_three() {
    const PRICE: i64 = 300;
    const SOCKETS: usize = 5;
    const REST: usize = 5;
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("afford"), PRICE, 100).await;
    let guest = server.login_new().await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(server.connect(&guest).await);
    }
    let start_seq = sockets[0].welcome.as_ref().unwrap().data["last_seq"]
        .as_u64()
        .unwrap();

    let barrier = Arc::new(Barrier::new(SOCKETS + REST));
    let url = server.url("/api/exchange/submit");
    let body = json!({ "product_id": product_id, "quantity": 1 });
    let mut rest_tasks = Vec::new();
    for i in 0..REST {
        let (http, url, token, barrier, body) = (
            server.http.clone(),
            url.clone(),
            guest.access_token.clone(),
            barrier.clone(),
            body.clone(),
        );
        rest_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let a = post_json(&http, &url, &token, body, Some(&format!("afford-rest-{i}"))).await;
            Outcome {
                status: Some(a.status),
                code: a.code(),
                data: a.data().clone(),
            }
        }));
    }
    let mut ws_tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (barrier, body) = (barrier.clone(), body.clone());
        ws_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = submit_ws(&mut ws, &format!("afford-ws-{i}"), body).await;
            Outcome {
                status: None,
                code: i64::from(r.code.unwrap()),
                data: r.data,
            }
        }));
    }
    let mut outcomes = Vec::new();
    for t in rest_tasks.into_iter().chain(ws_tasks) {
        outcomes.push(t.await.unwrap());
    }

    let mut remaining = Vec::new();
    for o in &outcomes {
        match o.code {
            0 => {
                assert!(matches!(o.status, None | Some(200)), "{o:?}");
                remaining.push(o.data["remaining_points"].as_i64().unwrap());
            }
            NOT_ENOUGH_POINTS => {
                assert!(matches!(o.status, None | Some(422)), "{o:?}");
                assert_eq!(o.data["required"].as_i64(), Some(PRICE), "{o:?}");
                let current = o.data["current"].as_i64().unwrap();
                assert!(current < PRICE, "{o:?}");
                assert_eq!(
                    current, 100,
                    "only the last 100 points are ever short: {o:?}"
                );
                assert_eq!(o.data["shortage"].as_i64(), Some(PRICE - current));
            }
            _ => panic!("a racing purchase succeeds or is told 4005: {o:?}"),
        }
    }
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        vec![100, 400, 700],
        "three purchases, each from the last"
    );

    let audit = server.audit(guest.user_id).await;
    audit.assert_consistent();
    assert_eq!(audit.total_points, 100);
    assert_eq!(audit.last_seq, start_seq + 3, "one event per purchase");
    assert_eq!(exchange_spends(&server, guest.user_id).await, 3);
    assert_eq!(order_rows(&server, guest.user_id).await, 3);
    assert_eq!(stock_of(&server, product_id).await, (97, 3));
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_purchase_retried_with_its_key_replays_through_either_door_and_charges_once() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("idem"), 100, 5).await;
    let guest = server.login_new().await;
    let key = "exchange-retry:1.a_b";
    let body = json!({ "product_id": product_id, "quantity": 1 });

    let first = submit_rest(&server, &guest, body.clone(), Some(key)).await;
    let first = first.ok().clone();
    assert_eq!(first["remaining_points"], 900);
    assert_eq!(first["remaining_stock"], 4);
    let after_first = snapshot(&server, &guest, &[product_id]).await;

    // The reply was lost; the client sends the same request again.
    let again = submit_rest(&server, &guest, body.clone(), Some(key)).await;
    let again = again.ok();
    assert_eq!(*again, first, "the same key replays the same data");
    assert_eq!(again["exchange_id"], first["exchange_id"]);
    assert_eq!(again["exchange_code"], first["exchange_code"]);

    // The REST key is also a socket command id.
    let mut ws = server.connect(&guest).await;
    let reply = submit_ws(&mut ws, key, body.clone()).await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data, first, "the socket replays the REST result");
    settle(&mut ws, "settle-replay").await;
    assert!(
        ws.pending
            .iter()
            .all(|f| f.kind != "points_update" && f.kind != "stock_update"),
        "a replay changes nothing and tells nobody: {:?}",
        ws.pending
    );

    let now = snapshot(&server, &guest, &[product_id]).await;
    assert_eq!(now, after_first, "charged once, stock taken once");
    assert_eq!(now.points, START_POINTS - 100);
    assert_eq!(now.stocks, vec![(4, 1)]);
    assert_eq!((now.orders, now.spends), (1, 1));

    // The same key for another quantity is a conflict that changes nothing.
    let other = json!({ "product_id": product_id, "quantity": 2 });
    let conflict = submit_rest(&server, &guest, other.clone(), Some(key)).await;
    assert!(conflict.refused(409, IDEMPOTENCY_CONFLICT).is_null());
    let reply = submit_ws(&mut ws, key, other).await;
    assert_eq!(reply.code, Some(IDEMPOTENCY_CONFLICT as i32), "{reply:?}");
    assert!(reply.data.is_null());
    assert_eq!(snapshot(&server, &guest, &[product_id]).await, after_first);
    server.audit(guest.user_id).await.assert_consistent();

    // And the original still replays.
    let still = submit_rest(&server, &guest, body, Some(key)).await;
    assert_eq!(*still.ok(), first);
}

#[tokio::test]
async fn a_socket_purchase_retried_over_rest_replays_the_socket_result() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("idemws"), 250, 5).await;
    let guest = server.login_new().await;
    let mut ws = server.connect(&guest).await;
    let body = json!({ "product_id": product_id, "quantity": 2 });

    let reply = submit_ws(&mut ws, "ws-then-rest", body.clone()).await;
    assert_eq!(reply.code, Some(0), "{reply:?}");
    assert_eq!(reply.data["total_cost"], 500);
    let again = submit_rest(&server, &guest, body, Some("ws-then-rest")).await;
    assert_eq!(*again.ok(), reply.data);

    assert_eq!(stock_of(&server, product_id).await, (3, 2));
    assert_eq!(exchange_spends(&server, guest.user_id).await, 1);
    let audit = server.audit(guest.user_id).await;
    assert_eq!(audit.total_points, START_POINTS - 500);
    audit.assert_consistent();
}

#[tokio::test]
async fn ten_submits_racing_with_one_key_over_both_doors_buy_once_and_all_see_the_one_result() {
    const SOCKETS: usize = 5;
    const REST: usize = 5;
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("onekey"), 100, 50).await;
    let guest = server.login_new().await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        sockets.push(server.connect(&guest).await);
    }
    let start_seq = sockets[0].welcome.as_ref().unwrap().data["last_seq"]
        .as_u64()
        .unwrap();
    let key = "one-key-race";
    let body = json!({ "product_id": product_id, "quantity": 1 });

    let barrier = Arc::new(Barrier::new(SOCKETS + REST));
    let url = server.url("/api/exchange/submit");
    let mut rest_tasks = Vec::new();
    for _ in 0..REST {
        let (http, url, token, barrier, body) = (
            server.http.clone(),
            url.clone(),
            guest.access_token.clone(),
            barrier.clone(),
            body.clone(),
        );
        rest_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            post_json(&http, &url, &token, body, Some(key)).await
        }));
    }
    let mut ws_tasks = Vec::new();
    for mut ws in sockets {
        let (barrier, body) = (barrier.clone(), body.clone());
        ws_tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            submit_ws(&mut ws, key, body).await
        }));
    }
    let mut results = Vec::new();
    for t in rest_tasks {
        results.push(t.await.unwrap().ok().clone());
    }
    for t in ws_tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.code, Some(0), "{reply:?}");
        results.push(reply.data);
    }
    assert!(
        results.iter().all(|r| *r == results[0]),
        "every racer sees the one purchase: {results:?}"
    );

    assert_eq!(stock_of(&server, product_id).await, (49, 1));
    assert_eq!(exchange_spends(&server, guest.user_id).await, 1);
    assert_eq!(order_rows(&server, guest.user_id).await, 1);
    let audit = server.audit(guest.user_id).await;
    assert_eq!(audit.total_points, START_POINTS - 100);
    assert_eq!(audit.last_seq, start_seq + 1, "one purchase, one event");
    audit.assert_consistent();
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_refused_before_anything_is_bought() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("badkey"), 100, 5).await;
    let guest = server.login_new().await;
    let before = snapshot(&server, &guest, &[product_id]).await;
    let too_long = "k".repeat(65);
    for key in [too_long.as_str(), "has space", "slash/key", "中文"] {
        let a = answer(
            server
                .http
                .post(server.url("/api/exchange/submit"))
                .bearer_auth(&guest.access_token)
                .header(
                    "Idempotency-Key",
                    reqwest::header::HeaderValue::from_bytes(key.as_bytes()).unwrap(),
                )
                .json(&json!({ "product_id": product_id, "quantity": 1 })),
        )
        .await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "key {key:?}");
    }
    assert_eq!(snapshot(&server, &guest, &[product_id]).await, before);
    let a = submit_rest(
        &server,
        &guest,
        json!({ "product_id": product_id, "quantity": 1 }),
        Some(&"k".repeat(64)),
    )
    .await;
    assert_eq!(a.ok()["remaining_stock"], 4, "64 characters is still a key");
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn refused_purchases_through_either_door_change_nothing() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("refuse");
    let few = new_product(&server, &merchant, &category, 100, 3).await;
    let dear = new_product(&server, &merchant, &category, 600, 10).await;
    let inactive = create_product(
        &server,
        &merchant,
        json!({ "name": "下架", "category": category, "exchange_points": 10, "stock": 10, "status": "inactive" }),
    )
    .await["product_id"]
        .as_u64()
        .unwrap();
    let guest = server.login_new().await;
    let mut ws = server.connect(&guest).await;
    let products = [few, dear, inactive];
    let before = snapshot(&server, &guest, &products).await;
    assert_eq!(before.points, START_POINTS);

    let cases: [(Value, u16, i64, Value); 13] = [
        (
            json!({ "product_id": few, "quantity": 0 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": few, "quantity": -1 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": few, "quantity": 100 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": few, "quantity": 1e12 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": few, "quantity": "1" }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": few }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "quantity": 1 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": "abc", "quantity": 1 }),
            400,
            INVALID_PARAMETER,
            Value::Null,
        ),
        (
            json!({ "product_id": 999_999, "quantity": 1 }),
            404,
            PRODUCT_UNAVAILABLE,
            Value::Null,
        ),
        (
            json!({ "product_id": 1u64 << 40, "quantity": 1 }),
            404,
            PRODUCT_UNAVAILABLE,
            Value::Null,
        ),
        (
            json!({ "product_id": inactive, "quantity": 1 }),
            404,
            PRODUCT_UNAVAILABLE,
            Value::Null,
        ),
        (
            json!({ "product_id": few, "quantity": 5 }),
            422,
            NOT_ENOUGH_STOCK,
            json!({ "available_stock": 3 }),
        ),
        (
            json!({ "product_id": dear, "quantity": 2 }),
            422,
            NOT_ENOUGH_POINTS,
            json!({ "required": 1200, "current": 1000, "shortage": 200 }),
        ),
    ];
    for (i, (body, status, code, data)) in cases.into_iter().enumerate() {
        let a = submit_rest(
            &server,
            &guest,
            body.clone(),
            Some(&format!("refused-rest-{i}")),
        )
        .await;
        assert_eq!(*a.refused(status, code), data, "REST {body}");
        assert_eq!(
            snapshot(&server, &guest, &products).await,
            before,
            "REST {body} changed something"
        );

        let reply = submit_ws(&mut ws, &format!("refused-ws-{i}"), body.clone()).await;
        assert_eq!(reply.code, Some(code as i32), "socket {body}: {reply:?}");
        assert_eq!(reply.data, data, "socket {body}");
        if code != INVALID_PARAMETER {
            assert_eq!(
                reply.msg.as_deref(),
                a.body["msg"].as_str(),
                "one message for both doors"
            );
        }
        assert_eq!(
            snapshot(&server, &guest, &products).await,
            before,
            "socket {body} changed something"
        );
    }
    settle(&mut ws, "settle-refusals").await;
    assert!(
        ws.pending
            .iter()
            .all(|f| f.kind != "points_update" && f.kind != "stock_update"),
        "a refusal tells nobody anything: {:?}",
        ws.pending
    );
    server.audit(guest.user_id).await.assert_consistent();

    // The refusals did not break anything: the last three still sell.
    let bought = buy(&server, &guest, few, 3).await;
    assert_eq!(bought["remaining_stock"], 0);
}

// ---------------------------------------------------------------------------
// Orders and redemption
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_guest_sees_their_own_orders_newest_first_with_codes_and_nobody_elses() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("orders");
    let tea = new_product(&server, &merchant, &category, 100, 10).await;
    let cake = new_product(&server, &merchant, &category, 200, 10).await;
    let alice = server.login_new().await;
    let bob = server.login_new().await;

    let first = buy(&server, &alice, tea, 1).await;
    let mut ws = server.connect(&alice).await;
    let second = submit_ws(
        &mut ws,
        "orders-ws-1",
        json!({ "product_id": cake, "quantity": 2 }),
    )
    .await;
    assert_eq!(second.code, Some(0), "{second:?}");
    let second = second.data;
    let bobs = buy(&server, &bob, tea, 1).await;

    let list = orders_of(&server, &alice).await;
    let orders = list["orders"].as_array().expect("orders are listed");
    assert_eq!(orders.len(), 2, "{list}");
    assert_eq!(list["pagination"]["total"], 2);
    for (order, bought, product, quantity, cost) in [
        (&orders[0], &second, cake, 2, 400),
        (&orders[1], &first, tea, 1, 100),
    ] {
        assert_eq!(
            order["exchange_id"], bought["exchange_id"],
            "newest first: {list}"
        );
        assert_eq!(order["exchange_code"], bought["exchange_code"]);
        assert_code_shape(order["exchange_code"].as_str().unwrap());
        assert_eq!(order["product_id"].as_u64(), Some(product));
        assert_eq!(order["product_name"], format!("{category} 商品"));
        assert_eq!(order["quantity"], quantity);
        assert_eq!(order["total_cost"], cost);
        assert_eq!(order["status"], "pending");
        assert!(order["redeemed_at"].is_null());
        assert!(order["created_at"].is_string());
    }
    assert!(
        orders
            .iter()
            .all(|o| o["exchange_id"] != bobs["exchange_id"]),
        "another guest's order is not shown"
    );

    let list = orders_of(&server, &bob).await;
    let orders = list["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{list}");
    assert_eq!(orders[0]["exchange_id"], bobs["exchange_id"]);
}

#[tokio::test]
async fn a_merchant_redeems_a_code_once_and_the_guest_sees_it_redeemed() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("redeem"), 100, 10).await;
    let guest = server.login_new().await;
    let bought = buy(&server, &guest, product_id, 1).await;
    let code = bought["exchange_code"].as_str().unwrap();

    let a = redeem(&server, &merchant, code).await;
    let r = a.ok().clone();
    assert_eq!(r["status"], "redeemed");
    assert_eq!(r["exchange_code"], code);
    assert_eq!(r["exchange_id"], bought["exchange_id"]);
    assert_eq!(r["user_id"].as_u64(), Some(guest.user_id));
    assert_eq!(r["product_id"].as_u64(), Some(product_id));
    assert_eq!(r["quantity"], 1);
    let redeemed_at = r["redeemed_at"].as_str().expect("redeemed_at is a time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(redeemed_at).is_ok(),
        "{redeemed_at}"
    );

    let list = orders_of(&server, &guest).await;
    let order = &list["orders"][0];
    assert_eq!(order["exchange_code"], code);
    assert_eq!(order["status"], "redeemed");
    assert_eq!(order["redeemed_at"], redeemed_at, "{list}");

    let again = redeem(&server, &merchant, code).await;
    let d = again.refused(409, ALREADY_REDEEMED);
    assert_eq!(d["current_status"], "redeemed");
    assert_eq!(
        d["redeemed_at"], redeemed_at,
        "the refusal says when: {}",
        again.text
    );
    assert_eq!(
        orders_of(&server, &guest).await["orders"][0]["redeemed_at"],
        redeemed_at
    );
}

#[tokio::test]
async fn codes_that_name_no_order_are_not_found() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    for code in [
        "ZZZZZZZZ",
        "22222222",
        "not-a-code!",
        "ZZZZ",
        "ZZZZZZZZZ",
        "",
        "0OIL0OIL",
        "中文兑换码",
    ] {
        let a = redeem(&server, &merchant, code).await;
        assert!(
            a.refused(404, CODE_NOT_FOUND).is_null(),
            "{code:?}: {}",
            a.text
        );
    }
}

#[tokio::test]
async fn a_code_typed_in_lower_case_is_redeemed() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("lower"), 100, 10).await;
    let guest = server.login_new().await;
    let code = buy(&server, &guest, product_id, 1).await["exchange_code"]
        .as_str()
        .unwrap()
        .to_string();

    let a = redeem(&server, &merchant, &format!(" {} ", code.to_lowercase())).await;
    assert_eq!(
        a.ok()["exchange_code"],
        code.as_str(),
        "codes are case-insensitive"
    );
    assert_eq!(
        orders_of(&server, &guest).await["orders"][0]["status"],
        "redeemed"
    );
    redeem(&server, &merchant, &code)
        .await
        .refused(409, ALREADY_REDEEMED);
}

#[tokio::test]
async fn two_merchants_redeeming_one_code_at_once_redeem_it_exactly_once() {
    let server = TestServer::start().await;
    let demo = merchant(&server).await;
    let other = server.new_merchant().await;
    let product_id = new_product(&server, &demo, &fresh_category("redeemrace"), 100, 10).await;
    let guest = server.login_new().await;
    let code = buy(&server, &guest, product_id, 1).await["exchange_code"]
        .as_str()
        .unwrap()
        .to_string();

    let barrier = Arc::new(Barrier::new(2));
    let url = server.url("/api/merchant/exchange/redeem");
    let mut tasks = Vec::new();
    for m in [&demo, &other] {
        let (http, url, token, barrier, code) = (
            server.http.clone(),
            url.clone(),
            m.access_token.clone(),
            barrier.clone(),
            code.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            answer(
                http.post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "exchange_code": code })),
            )
            .await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers.sort_by_key(|a| a.status);
    answers[0].ok();
    let d = answers[1].refused(409, ALREADY_REDEEMED);
    assert_eq!(d["current_status"], "redeemed");
    assert_eq!(d["redeemed_at"], answers[0].data()["redeemed_at"]);
    let (redeemed_by,): (Option<u64>,) =
        sqlx::query_as("SELECT redeemed_by FROM exchange_orders WHERE exchange_code = ?")
            .bind(&code)
            .fetch_one(&server.db)
            .await
            .unwrap();
    assert!(
        redeemed_by == Some(demo.user_id) || redeemed_by == Some(other.user_id),
        "{redeemed_by:?}"
    );
}

// ---------------------------------------------------------------------------
// Merchant tools
// ---------------------------------------------------------------------------

#[tokio::test]
async fn every_merchant_tool_refuses_a_guest_and_a_caller_without_a_token() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("guard");
    let product_id = new_product(&server, &merchant, &category, 100, 5).await;
    let guest = server.login_new().await;
    let code = buy(&server, &guest, product_id, 1).await["exchange_code"]
        .as_str()
        .unwrap()
        .to_string();

    let endpoints: [(Method, String, Option<Value>); 6] = [
        (Method::GET, "/api/merchant/products".into(), None),
        (
            Method::POST,
            "/api/merchant/products".into(),
            Some(
                json!({ "name": "偷偷上架", "category": category, "exchange_points": 1, "stock": 9 }),
            ),
        ),
        (
            Method::PUT,
            format!("/api/merchant/products/{product_id}"),
            Some(json!({ "name": "改名", "exchange_points": 1 })),
        ),
        (
            Method::POST,
            format!("/api/merchant/products/{product_id}/stock"),
            Some(json!({ "operation": "restock", "quantity": 100 })),
        ),
        (
            Method::GET,
            format!("/api/merchant/products/{product_id}/stock-changes"),
            None,
        ),
        (
            Method::POST,
            "/api/merchant/exchange/redeem".into(),
            Some(json!({ "exchange_code": code })),
        ),
    ];
    for (method, path, body) in endpoints {
        let a = call(
            &server,
            method.clone(),
            &path,
            Some(&guest.access_token),
            body.clone(),
        )
        .await;
        assert!(
            a.refused(403, MERCHANT_REQUIRED).is_null(),
            "guest {method} {path}"
        );
        let a = call(&server, method.clone(), &path, None, body).await;
        assert!(
            a.refused(401, TOKEN_MISSING).is_null(),
            "no token {method} {path}"
        );
    }

    // Nothing changed.
    let all = merchant_list(&server, &merchant, &format!("category={category}")).await;
    assert_eq!(ids_of(&all), vec![product_id]);
    let p = find_product(&all, product_id);
    assert_eq!(p["name"], format!("{category} 商品"));
    assert_eq!(
        (p["exchange_points"].as_i64(), p["stock"].as_i64()),
        (Some(100), Some(4))
    );
    assert_eq!(
        orders_of(&server, &guest).await["orders"][0]["status"],
        "pending"
    );
}

#[tokio::test]
async fn creating_a_product_checks_every_field_and_audits_the_opening_stock() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("create");
    let valid = json!({
        "name": "新品",
        "description": "好吃",
        "category": category,
        "exchange_points": 120,
        "stock": 7,
        "image": "https://example.com/a.png",
    });
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let bad = [
        without("name"),
        without("category"),
        without("exchange_points"),
        with("name", json!("")),
        with("name", json!("   ")),
        with("name", json!("名".repeat(101))),
        with("exchange_points", json!(0)),
        with("exchange_points", json!(-5)),
        with("exchange_points", json!("120")),
        with("stock", json!(-1)),
        with("stock", json!(1.5)),
        with("status", json!("deleted")),
        with("colour", json!("red")),
    ];
    for body in bad {
        let a = post(&server, "/api/merchant/products", &merchant, body.clone()).await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "{body}");
    }
    let none = merchant_list(&server, &merchant, &format!("category={category}")).await;
    assert!(
        products_of(&none).is_empty(),
        "a refused product is not created: {none}"
    );

    let p = create_product(&server, &merchant, valid).await;
    assert_eq!(p["name"], "新品");
    assert_eq!(p["description"], "好吃");
    assert_eq!(p["category"], category.as_str());
    assert_eq!(p["exchange_points"], 120);
    assert_eq!(p["stock"], 7);
    assert_eq!(p["image"], "https://example.com/a.png");
    assert_eq!(
        p["status"], "active",
        "a new product is on sale unless told otherwise"
    );
    assert_eq!(p["sales_count"], 0);
    let product_id = p["product_id"].as_u64().unwrap();
    let changes = stock_changes(&server, &merchant, product_id).await;
    let rows = changes["changes"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{changes}");
    assert_eq!(rows[0]["operation"], "create");
    assert_eq!(rows[0]["delta"], 7);
    assert_eq!(rows[0]["stock_after"], 7);
    assert_eq!(rows[0]["actor_id"].as_u64(), Some(merchant.user_id));
}

#[tokio::test]
async fn editing_a_product_changes_its_name_price_and_status_but_never_its_stock() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let category = fresh_category("edit");
    let product_id = new_product(&server, &merchant, &category, 100, 5).await;
    let guest = server.login_new().await;
    let path = format!("/api/merchant/products/{product_id}");

    let p = put(
        &server,
        &path,
        &merchant,
        json!({ "name": "新名字", "exchange_points": 150 }),
    )
    .await;
    let p = p.ok();
    assert_eq!(p["name"], "新名字");
    assert_eq!(p["exchange_points"], 150);
    assert_eq!(p["stock"], 5);
    assert_eq!(
        p["category"],
        category.as_str(),
        "fields not sent stay as they were"
    );

    // Stock moves only through the audited stock tool.
    for body in [
        json!({ "stock": 50 }),
        json!({ "name": "又改名", "stock": 1 }),
    ] {
        let a = put(&server, &path, &merchant, body.clone()).await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "{body}");
    }
    assert_eq!(stock_of(&server, product_id).await, (5, 0));
    let listed = guest_list(&server, &guest, &format!("category={category}")).await;
    assert_eq!(find_product(&listed, product_id)["name"], "新名字");

    // Invalid edits change nothing.
    for body in [
        json!({ "exchange_points": 0 }),
        json!({ "status": "sold" }),
        json!({ "name": "" }),
        json!({ "colour": "red" }),
    ] {
        let a = put(&server, &path, &merchant, body.clone()).await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "{body}");
    }
    let a = put(
        &server,
        "/api/merchant/products/999999",
        &merchant,
        json!({ "name": "无" }),
    )
    .await;
    a.refused(404, PRODUCT_UNAVAILABLE);

    // The new price is the price charged.
    let bought = buy(&server, &guest, product_id, 1).await;
    assert_eq!(bought["total_cost"], 150);
    assert_eq!(
        server.audit(guest.user_id).await.total_points,
        START_POINTS - 150
    );

    // Taken off sale: gone from the guest's list, not from the merchant's,
    // and no longer sold.
    let p = put(&server, &path, &merchant, json!({ "status": "inactive" })).await;
    assert_eq!(p.ok()["status"], "inactive");
    let listed = guest_list(&server, &guest, &format!("category={category}")).await;
    assert!(products_of(&listed).is_empty(), "{listed}");
    let all = merchant_list(&server, &merchant, &format!("category={category}")).await;
    assert_eq!(find_product(&all, product_id)["status"], "inactive");
    let a = submit_rest(
        &server,
        &guest,
        json!({ "product_id": product_id, "quantity": 1 }),
        None,
    )
    .await;
    a.refused(404, PRODUCT_UNAVAILABLE);

    // Back on sale.
    put(&server, &path, &merchant, json!({ "status": "active" }))
        .await
        .ok();
    let listed = guest_list(&server, &guest, &format!("category={category}")).await;
    assert_eq!(ids_of(&listed), vec![product_id]);
    assert_eq!(stock_of(&server, product_id).await, (4, 1));
}

#[tokio::test]
async fn a_restock_adds_to_the_stock_and_tells_every_socket() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("restock"), 100, 3).await;
    let guests = join_all((0..3).map(|_| server.login_new())).await;
    let mut sockets = join_all(guests.iter().map(|g| server.connect(g))).await;
    sockets.push(server.connect(&merchant).await);

    let a = change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "restock", "quantity": 5, "reason": "到货" }),
    )
    .await;
    assert_eq!(a.ok()["stock"], 8);
    assert_eq!(stock_of(&server, product_id).await, (8, 0));
    for (i, ws) in sockets.iter_mut().enumerate() {
        let updates = stock_updates_until(ws, product_id, 8).await;
        let u = updates.last().unwrap();
        assert_eq!(updates.len(), 1, "socket {i}: {updates:?}");
        assert_eq!(u["operation"], "restock", "socket {i}");
        assert!(u["product_name"].is_string());
    }

    for body in [
        json!({ "operation": "restock", "quantity": 0 }),
        json!({ "operation": "restock", "quantity": -3 }),
        json!({ "operation": "restock", "quantity": "5" }),
        json!({ "operation": "restock" }),
        json!({ "operation": "steal", "quantity": 5 }),
        json!({ "operation": "restock", "quantity": 5, "note": "x" }),
    ] {
        let a = change_stock(&server, &merchant, product_id, body.clone()).await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "{body}");
    }
    let a = change_stock(
        &server,
        &merchant,
        999_999,
        json!({ "operation": "restock", "quantity": 5 }),
    )
    .await;
    a.refused(404, PRODUCT_UNAVAILABLE);
    assert_eq!(stock_of(&server, product_id).await, (8, 0));
    let ws = &mut sockets[0];
    settle(ws, "settle-restock").await;
    assert!(
        ws.pending.iter().all(|f| f.kind != "stock_update"),
        "a refused change broadcasts nothing: {:?}",
        ws.pending
    );
}

#[tokio::test]
async fn an_admin_adjustment_needs_a_reason_and_never_takes_stock_below_zero() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("adjust"), 100, 10).await;
    let guest = server.login_new().await;
    let mut ws = server.connect(&guest).await;

    let a = change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "admin_adjust", "quantity": -2, "reason": "盘点破损" }),
    )
    .await;
    assert_eq!(a.ok()["stock"], 8);
    assert_eq!(stock_of(&server, product_id).await, (8, 0));
    let updates = stock_updates_until(&mut ws, product_id, 8).await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0]["operation"], "admin_adjust");

    for body in [
        json!({ "operation": "admin_adjust", "quantity": -2 }),
        json!({ "operation": "admin_adjust", "quantity": -2, "reason": "" }),
        json!({ "operation": "admin_adjust", "quantity": -2, "reason": "   " }),
        json!({ "operation": "admin_adjust", "quantity": 0, "reason": "无变化" }),
    ] {
        let a = change_stock(&server, &merchant, product_id, body.clone()).await;
        assert!(a.refused(400, INVALID_PARAMETER).is_null(), "{body}");
    }
    let a = change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "admin_adjust", "quantity": -9, "reason": "多扣" }),
    )
    .await;
    assert_eq!(
        *a.refused(422, NOT_ENOUGH_STOCK),
        json!({ "available_stock": 8 })
    );
    assert_eq!(
        stock_of(&server, product_id).await,
        (8, 0),
        "a refused adjustment changes nothing"
    );

    // Down to exactly zero is allowed, and up again.
    let a = change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "admin_adjust", "quantity": -8, "reason": "清仓" }),
    )
    .await;
    assert_eq!(a.ok()["stock"], 0);
    let a = change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "admin_adjust", "quantity": 3, "reason": "找到库存" }),
    )
    .await;
    assert_eq!(a.ok()["stock"], 3);
    let updates = stock_updates_until(&mut ws, product_id, 3).await;
    let stocks: Vec<i64> = updates
        .iter()
        .map(|u| u["stock"].as_i64().unwrap())
        .collect();
    assert_eq!(
        stocks,
        vec![0, 3],
        "the refused adjustment was never broadcast"
    );
    assert_eq!(
        count(
            &server,
            "SELECT COUNT(*) FROM stock_changes WHERE product_id = ? AND operation = 'admin_adjust'",
            product_id,
        )
        .await,
        3
    );
}

#[tokio::test]
async fn the_stock_audit_lists_every_change_newest_first_and_adds_up_to_the_stock() {
    let server = TestServer::start().await;
    let merchant = merchant(&server).await;
    let product_id = new_product(&server, &merchant, &fresh_category("audit"), 100, 5).await;
    let guest = server.login_new().await;

    let bought = buy(&server, &guest, product_id, 2).await;
    change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "restock", "quantity": 4 }),
    )
    .await
    .ok();
    change_stock(
        &server,
        &merchant,
        product_id,
        json!({ "operation": "admin_adjust", "quantity": -1, "reason": "盘点差异" }),
    )
    .await
    .ok();

    let list = stock_changes(&server, &merchant, product_id).await;
    let rows = list["changes"].as_array().expect("changes are listed");
    assert_eq!(list["pagination"]["total"], 4, "{list}");
    let seen: Vec<(&str, i64, i64, Option<u64>)> = rows
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["delta"].as_i64().unwrap(),
                r["stock_after"].as_i64().unwrap(),
                r["actor_id"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("admin_adjust", -1, 6, Some(merchant.user_id)),
            ("restock", 4, 7, Some(merchant.user_id)),
            ("purchase", -2, 3, Some(guest.user_id)),
            ("create", 5, 5, Some(merchant.user_id)),
        ],
        "newest first: {list}"
    );
    assert_eq!(rows[0]["reason"], "盘点差异");
    assert_eq!(
        rows[2]["related_id"], bought["exchange_id"],
        "a purchase names its order"
    );
    for r in rows {
        assert_eq!(r["product_id"].as_u64(), Some(product_id));
        assert!(
            r["reason"].is_string() && r["created_at"].is_string(),
            "{r}"
        );
    }
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["change_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");

    let total: i64 = seen.iter().map(|s| s.1).sum();
    let (stock, sales) = stock_of(&server, product_id).await;
    assert_eq!(
        (total, stock, sales),
        (6, 6, 2),
        "the deltas add up to the stock"
    );

    let a = get(
        &server,
        "/api/merchant/products/999999/stock-changes",
        &merchant,
    )
    .await;
    a.refused(404, PRODUCT_UNAVAILABLE);
}
