# 生命周期：私域五类核心人群
# 顺序是刻意的。

# -- 阈值 --
let window = 7d # 沉默：连续 7 天无互动
let min_orders = 3   # 至少 3 单


# 沉默：长期无互动
tag "沉默" when days_since(last_active_at) >= 30 # 30 天
  and not exists(orders within window) # 且近期未消费

group "生命周期" exclusive { # 互斥：先匹配者胜
  # 最先：高价值
  tag "高价值" when count(orders) >= min_orders {
    priority 90 # 高
    # 说明在后
    description "复购≥3单"
    # 块尾注释
  }
  tag "老客" when count(orders) >= 1 # 下过单
  # 组尾注释
} # 组结束

audience "唤醒名单" = tag("沉默") {} # 空块

tag "VIP手工" manual {
  # 仅有注释的块
}
tag "x" when (age > 18 # 成年
  or age is missing)
# 文件末尾注释
